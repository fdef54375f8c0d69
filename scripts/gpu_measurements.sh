#!/usr/bin/env bash
# Every GPU figure of docs/paper-scale.md, in one run that stops by DEADLINE seconds (default 570: under a
# 10-minute cap of a batch queue that kills a longer command) on one GPU (make gpu-measurements). Steps, in this order:
#   train      experiment=paper_fast at alpha=0.5, seed 0 (fit time, kept epoch: the store's metrics.json)
#   eval       its test accuracy on N=1,000 points: clean, the evaluation attack and standard AutoAttack at 0.5, fp32
#   precision  the same curve in bf16 against fp32 on the same points (bench.mode=precision)
#   bench      make bench-gpu: eager epoch, seeds' processes sharing the GPU, each torch.compile mode
# Each step runs under the smaller of its own limit and the time left, and a failed step does not stop the
# next; summary.md gets a line per step and the store's numbers. The bench writes its rows as it measures
# them. STEPS=bench DEADLINE=200 runs only the bench (a second call, for the compile modes a first one had
# no time for; BENCH_ARGS="bench.gpu_epoch.processes=[]" skips what the first call measured). Exit status 1
# when a step failed or had no time left. Results go to $OUT (default logs/gpu); the store to $WORK/store.
# On a GPU machine with torch but no package index and no data: `make device-carry` first, and copy .device-carry there.
# SMOKE=1: the same steps at tiny sizes on the CPU (tests/test_gpu_measurements.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/gpu}
WORK=${WORK:-logs/gpu-work}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-570}
STEPS=${STEPS:-train eval precision bench}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline WANDB_SILENT=true HYDRA_FULL_ERROR=0
if [ -d .device-carry/site ]; then  # the packages the image lacks (make device-carry), after everything it has
  export PYTHONPATH="$PYTHONPATH:$PWD/.device-carry/site"
  [ -f .device-carry/cifar10-jpeg-q75.tar.gz ] && export RE_CIFAR_ARCHIVE="$PWD/.device-carry/cifar10-jpeg-q75.tar.gz"
fi
[ -z "${RE_CIFAR_ARCHIVE:-}" ] && [ -f ../shared/data/cifar10-jpeg-q75.tar.gz ] \
  && export RE_CIFAR_ARCHIVE="$(cd ../shared/data && pwd)/cifar10-jpeg-q75.tar.gz"
hydra_list() { local out="" a; for a in "$@"; do out+="${out:+,}'$a'"; done; echo "[$out]"; }  # quoted items
PATHS=(logger=csv "paths.root_dir=$WORK" "paths.store_dir=$WORK/store")
MODEL=(experiment=paper_fast alpha=0.5 seed=0)
T_TRAIN=230 T_EVAL=150 T_PRECISION=40 T_BENCH=240 N=1000
MAX_TIME=00:00:03:30   # Lightning stops training (keeping the best epoch so far) before the step's 230 s cap;
                       # the summary flags such a model as truncated (max_time is no part of a store key, and
                       # this store, $WORK/store, is the script's own)
read -r -a BENCH <<<"${BENCH_ARGS:-}"
EVAL_SMOKE=()
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL+=(model=cnn model.width=8 data.subset=256 data.val_size=64 trainer.max_epochs=1 attack.steps=1 eval_attack.steps=1)
  N=32 T_TRAIN=200 T_EVAL=200 T_PRECISION=200 T_BENCH=200   # 2 busy CPU cores, not a GPU
  BENCH+=(bench.allow_cpu=true model=cnn model.width=4 bench.gpu_epoch.n_images=64 bench.gpu_epoch.batch_size=32
         bench.gpu_epoch.repeats=1 bench.gpu_epoch.bf16=false "bench.gpu_epoch.compile_modes=[]"
         "bench.gpu_epoch.processes=[2]" bench.gpu_epoch.process_epochs=1 bench.gpu_epoch.process_threads=1)
  EVAL_SMOKE=(evaluation.attack.steps=2 evaluation.attack.targeted_steps=2 evaluation.attack.target_classes=1
              checks.autoattack.version=custom "checks.autoattack.attacks=[apgd-ce]" checks.autoattack.apgd_iterations=5)
fi
START=$SECONDS FAILED=0
step() {  # step NAME SECONDS LOG COMMAND...: one line in summary.md per step, whatever its fate
  local name=$1 limit=$2 log=$3; shift 3
  local left=$((DEADLINE - (SECONDS - START) - 15))  # 15 s kept for the summary
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 0 ]; then
    echo "- $name: not run (no time left before DEADLINE=$DEADLINE s)" >>"$OUT/summary.md"; FAILED=1; return
  fi
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] && FAILED=1
  echo "- $name: exit $rc in $((SECONDS - t0)) s (limit $limit s; log $(basename "$log"))" >>"$OUT/summary.md"
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }
store_summary() {  # the store's models and records, into summary.md
  "$PY" - "$WORK/store" >>"$OUT/summary.md" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path
store = Path(sys.argv[1])
for m in sorted(store.glob("*/metrics.json")):
    d = json.loads(m.read_text())
    planned = int(next(ln.split(":")[1] for ln in (m.parent / "config.yaml").read_text().splitlines()
                       if ln.strip().startswith("max_epochs:")))
    cut = "" if d["last_epoch"] + 1 >= planned else f" **stopped by max_time after {d['last_epoch'] + 1} of {planned} epochs: not the recipe**"
    print(f"- model {m.parent.name}: fit {d['fit_seconds']:.0f} s on {d['device']}, kept epoch {d['best_epoch']} of "
          f"{d['last_epoch'] + 1} ({d['monitor']} {d['best_score']:.4f}), {d['train_images_per_s']:.0f} images/s{cut}")
for kind in ("curve", "autoattack"):
    for r in sorted((store / "records" / kind).glob("*.json")):
        d = json.loads(r.read_text())
        if kind == "curve":
            c = d["curve"]
            print(f"- curve {d['label']} ({d['precision']}, n={d['n']}, {d['wall_s']:.0f} s on {d['device']}): "
                  + ", ".join(f"{e:g}: {100 * a:.2f}%" for e, a in zip(c["eps"], c["cumulative"])))
        else:
            print(f"- AutoAttack ({d['autoattack']}) {d['label']} at {d['eps']} (n={d['n']}, {d['wall_s']:.0f} s "
                  f"on {d['device']}): {100 * d['autoattack_acc']:.2f}%")
PYEOF
}
{ echo "# GPU measurements $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), steps: $STEPS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >>"$OUT/summary.md" 2>&1
if ! "$PY" -c "import hydra, omegaconf, pyautoattack" 2>>"$OUT/summary.md"; then
  echo "error: hydra-core, omegaconf or pyautoattack is missing: run make device-carry and carry .device-carry" \
    | tee -a "$OUT/summary.md"
  exit 2
fi
wants train && step "1. train paper_fast alpha=0.5" "$T_TRAIN" "$OUT/train.log" \
  "$PY" -m robust_ensembles.train "${MODEL[@]}" "${PATHS[@]}" run_test=false "+trainer.max_time=$MAX_TIME"
wants eval && step "2a. evaluate fp32 + standard AutoAttack at 0.5 on $N points" "$T_EVAL" "$OUT/eval-fp32.log" \
  "$PY" -m robust_ensembles.evaluate "${MODEL[@]}" "${PATHS[@]}" "${EVAL_SMOKE[@]}" K=1 data.test_subset=$N \
  "evaluation.eps_grid=[0,0.5]" evaluation.autoattack.eps=0.5 evaluation.autoattack.n=$N
wants precision && step "2b. precision parity bf16 vs fp32 at 0.5" "$T_PRECISION" "$OUT/precision.log" \
  "$PY" -m robust_ensembles.bench bench.mode=precision bench.output="$OUT/eval.md" \
  "bench.precision.overrides=$(hydra_list "${MODEL[@]}" K=1 data.test_subset=$N "${PATHS[@]}" "${EVAL_SMOKE[@]}")"
store_summary
wants bench && step "3. bench-gpu" "$T_BENCH" "$OUT/bench.log" \
  "$PY" -m robust_ensembles.bench bench.mode=gpu_epoch model=resnet18 bench.output="$OUT/bench-gpu.md" "${BENCH[@]}"
cat "$OUT/summary.md"
exit "$FAILED"
