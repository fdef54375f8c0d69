#!/usr/bin/env bash
# Every GPU figure of the paper-scale issue in one run of at most 10 minutes on one GPU (make gpu-measurements):
#   1. the fast recipe: experiment=paper_fast at alpha=0.5, seed 0 (its fit time is in the store)   train.log
#   2. its test accuracy on 1,000 points: clean, the evaluation attack and standard AutoAttack at 0.5,
#      fp32, and the same curve in bf16 against fp32 on the same points (bench.mode=precision)       eval.md
#   3. make bench-gpu: PGD-7 ResNet18 epochs eager and under each torch.compile mode, and 2 / 4 seeds'
#      processes sharing the GPU against one alone                                                    bench-gpu.md
# Steps run in that order, each under its own time limit, and a failed step does not stop the next.
# Results go to $OUT (default logs/gpu); the store to $WORK/store (default logs/gpu-work).
# A machine with no package index: `make device-carry` here, then carry .device-carry (wheels + data).
# SMOKE=1: the same steps at tiny sizes on the CPU (tests/test_gpu_measurements.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-logs/gpu}
WORK=${WORK:-logs/gpu-work}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline WANDB_SILENT=true HYDRA_FULL_ERROR=0
if [ -d .device-carry ]; then
  "$PY" -m pip install -q --no-index --find-links .device-carry hydra-core omegaconf pyautoattack 2>&1 | tail -3
  [ -f .device-carry/cifar10-jpeg-q75.tar.gz ] && export RE_CIFAR_ARCHIVE="$PWD/.device-carry/cifar10-jpeg-q75.tar.gz"
fi
[ -z "${RE_CIFAR_ARCHIVE:-}" ] && [ -f ../shared/data/cifar10-jpeg-q75.tar.gz ] \
  && export RE_CIFAR_ARCHIVE="$(cd ../shared/data && pwd)/cifar10-jpeg-q75.tar.gz"
hydra_list() { local out="" a; for a in "$@"; do out+="${out:+,}'$a'"; done; echo "[$out]"; }  # quoted items
PATHS=(logger=csv "paths.root_dir=$WORK" "paths.store_dir=$WORK/store")
MODEL=(experiment=paper_fast alpha=0.5 seed=0)
T_TRAIN=330 T_EVAL=150 T_BENCH=110 N=1000
BENCH=()
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL+=(model=cnn model.width=8 data.subset=256 data.val_size=64 trainer.max_epochs=1 attack.steps=1 eval_attack.steps=1)
  N=32 T_TRAIN=300 T_EVAL=300 T_BENCH=300
  BENCH=(bench.allow_cpu=true model=cnn model.width=4 bench.gpu_epoch.n_images=64 bench.gpu_epoch.batch_size=32
         bench.gpu_epoch.repeats=1 bench.gpu_epoch.bf16=false "bench.gpu_epoch.compile_modes=[]"
         "bench.gpu_epoch.processes=[2]" bench.gpu_epoch.process_epochs=1 bench.gpu_epoch.process_threads=1)
  EVAL_SMOKE=(evaluation.attack.steps=2 evaluation.attack.targeted_steps=2 evaluation.attack.target_classes=1
              checks.autoattack.version=custom "checks.autoattack.attacks=[apgd-ce]" checks.autoattack.apgd_iterations=5)
else
  EVAL_SMOKE=()
fi
step() {  # step NAME SECONDS LOG COMMAND...: one line in summary.md per step, whatever its fate
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  echo "- $name: exit $rc in $((SECONDS - t0)) s (limit $limit s; log $(basename "$log"))" | tee -a "$OUT/summary.md"
}
{ echo "# GPU measurements $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$OUT/summary.md" 2>&1
step "1. train paper_fast alpha=0.5" "$T_TRAIN" "$OUT/train.log" \
  "$PY" -m robust_ensembles.train "${MODEL[@]}" "${PATHS[@]}" run_test=false
step "2a. evaluate fp32 + standard AutoAttack at 0.5 on $N points" "$T_EVAL" "$OUT/eval-fp32.log" \
  "$PY" -m robust_ensembles.evaluate "${MODEL[@]}" "${PATHS[@]}" "${EVAL_SMOKE[@]}" K=1 data.test_subset=$N \
  "evaluation.eps_grid=[0,0.5]" evaluation.autoattack.eps=0.5 evaluation.autoattack.n=$N
step "2b. precision parity bf16 vs fp32 at 0.5" "$T_EVAL" "$OUT/precision.log" \
  "$PY" -m robust_ensembles.bench bench.mode=precision bench.output="$OUT/eval.md" \
  "bench.precision.overrides=$(hydra_list "${MODEL[@]}" K=1 data.test_subset=$N "${PATHS[@]}" "${EVAL_SMOKE[@]}")"
step "3. bench-gpu" "$T_BENCH" "$OUT/bench.log" \
  "$PY" -m robust_ensembles.bench bench.mode=gpu_epoch model=resnet18 bench.output="$OUT/bench-gpu.md" "${BENCH[@]}"
"$PY" - "$WORK/store" >>"$OUT/summary.md" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path
store = Path(sys.argv[1])
for m in sorted(store.glob("*/metrics.json")):
    d = json.loads(m.read_text())
    print(f"- model {m.parent.name}: fit {d['fit_seconds']:.0f} s on {d['device']}, kept epoch {d['best_epoch']} of "
          f"{d['last_epoch'] + 1} ({d['monitor']} {d['best_score']:.4f}), {d['train_images_per_s']:.0f} images/s")
for kind in ("curve", "autoattack"):
    for r in sorted((store / "records" / kind).glob("*.json")):
        d = json.loads(r.read_text())
        if kind == "curve":
            c = d["curve"]
            print(f"- curve {d['label']} ({d.get('precision')}, n={d['n']}, {d['wall_s']:.0f} s on {d['device']}): "
                  + ", ".join(f"{e:g}: {100 * a:.2f}%" for e, a in zip(c["eps"], c["cumulative"])))
        else:
            print(f"- AutoAttack ({d['autoattack']}) {d['label']} at {d['eps']} (n={d['n']}, {d['wall_s']:.0f} s on {d['device']}): {100 * d['autoattack_acc']:.2f}%")
PYEOF
cat "$OUT/summary.md"
