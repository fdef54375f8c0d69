# robust-ensembles: `make help` lists the targets.
PYTHON ?= python
ARGS ?=
SCALE ?= cpu
ESTIMATE ?=
AUTOATTACK ?= run
EPS ?= 0.5
K ?= 4
JOBS ?= 1
# JOBS=n (n > 1): the tables' training and evaluation as n one-thread jobs at once (Ray on this machine's CPUs;
# needs pip install -e ".[gpu-cluster]"); two on 2 cores fitted 1.14x (adversarial) to 1.39x (natural) the models
# per hour of one two-thread job (docs/cpu-scale.md)
PARALLEL = $(if $(filter-out 1,$(JOBS)),hydra/launcher=ray_cpu threads=1 evaluate_in=jobs hydra.launcher.ray.init.num_cpus=$(JOBS))

.PHONY: help install bench-deps test test-slow train-cpu train-paper tables table1 table2-size table2-equivalence bench bench-gpu bench-eval-attacks bench-tables-eval bench-alpha-search bench-store recommend profile gpu-measurements device-carry clean-outputs

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_ -]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

install:  ## install the project and its test tools into the current environment
	$(PYTHON) -m pip install -e ".[dev]"

bench-deps:  ## torchattacks for the bench baseline (--no-deps: its requests pin breaks resolution)
	$(PYTHON) -m pip install --no-deps torchattacks==3.5.1 scipy

test:  ## fast tests (the CI run; minutes on 2 cores)
	$(PYTHON) -m pytest -m "not slow"

test-slow:  ## slow tests (real CIFAR-10 archive, longer runs)
	$(PYTHON) -m pytest -m slow

train-cpu:  ## CPU scale: 2 natural + 2 alpha=0.25 models on the JPEG archive (ARGS=... adds overrides)
	$(PYTHON) -m robust_ensembles.train -m experiment=cpu alpha=0,0.25 'seed=range(2)' $(ARGS)

train-paper:  ## paper scale (GPU): ResNet18 at alpha 0.22 and 0.5, 8 seeds each (ARGS=... adds overrides)
	$(PYTHON) -m robust_ensembles.train -m experiment=paper alpha=0.22,0.5 'seed=range(8)' $(ARGS)

tables:  ## all three paper tables: trains their union first, then fills each (SCALE=cpu|paper, JOBS=2: two one-thread jobs at once, ARGS=hydra overrides)
	$(PYTHON) -m robust_ensembles.tables table=all scale=$(SCALE) autoattack_column=$(AUTOATTACK)$(if $(ESTIMATE), estimate=true)$(if $(PARALLEL), $(PARALLEL)) $(ARGS)

table1 table2-size table2-equivalence:  ## one paper table: trains what is missing, evaluates, writes reports/$(SCALE)/ (ESTIMATE=1: cost only; AUTOATTACK=run|stored|off; JOBS=2)
	$(PYTHON) -m robust_ensembles.tables table=$(subst -,_,$@) scale=$(SCALE) autoattack_column=$(AUTOATTACK)$(if $(ESTIMATE), estimate=true)$(if $(PARALLEL), $(PARALLEL)) $(ARGS)

recommend:  ## alpha for a target eps and K, searched on validation, reusing the store (EPS=0.5 K=4|null SCALE=cpu|paper)
	$(PYTHON) -m robust_ensembles.recommend scale=$(SCALE) target_eps=$(EPS) K=$(K) $(ARGS)

bench: bench-deps  ## speed ratios measured side by side (PGD vs clean step, vs common PGD, vs torchattacks, ensemble paths, one-thread jobs at once)
	$(PYTHON) -m robust_ensembles.bench bench.output=docs/bench-cpu.md $(ARGS)

bench-eval-attacks:  ## candidate evaluation attacks and grid searches vs the stored AutoAttack records and the scan: gaps and cost / PGD-20 (docs/evaluation.md)
	$(PYTHON) -m robust_ensembles.bench bench.mode=eval_attacks bench.output=docs/measurements/eval-attacks.md $(ARGS)

bench-tables-eval:  ## the tables' whole evaluation once per evaluation setting (scan, then guided), one after the other on the store's trained models, training nothing: wall times, their ratio, every table cell and verdict that changed (SCALE; runs as JOBS=2 does, through Ray: the gpu-cluster extra; docs/evaluation.md)
	$(PYTHON) -m robust_ensembles.bench bench.mode=tables_eval bench.tables_eval.scale=$(SCALE) bench.output=docs/measurements/tables-eval-$(SCALE).md $(ARGS)

bench-store:  ## the store's sha256 check on every model load vs torch.load alone (ResNet18 and the CPU model; docs/store.md)
	$(PYTHON) -m robust_ensembles.bench bench.mode=store_digest bench.output=docs/bench-store.md $(ARGS)

bench-alpha-search:  ## models each alpha-search strategy trains on stand-in stores (needs optuna; docs/recommend.md)
	$(PYTHON) -m pip install -q optuna
	$(PYTHON) -m robust_ensembles.bench bench.mode=alpha_search bench.output=docs/bench-alpha-search.md $(ARGS)

profile:  ## where a PGD training step's time goes: torch.profiler tables of a clean step and of the attack (docs/performance.md)
	$(PYTHON) -m robust_ensembles.bench bench.mode=profile $(ARGS)

bench-gpu:  ## one paper-scale epoch (ResNet18, 50k images, PGD-7 at 0.5, batch 512) vs a clean epoch, on a GPU
	$(PYTHON) -m robust_ensembles.bench bench.mode=gpu_epoch model=resnet18 bench.output=docs/bench-gpu.md $(ARGS)

gpu-measurements:  ## every GPU figure of docs/paper-scale.md in one run that stops by 570 s (results in logs/gpu/)
	PYTHON=$(PYTHON) bash scripts/gpu_measurements.sh

device-carry:  ## wheels the GPU machine lacks (it has torch, no package index) and the data archive, into .device-carry/
	rm -rf .device-carry && mkdir -p .device-carry
	$(PYTHON) -m pip install -q --no-deps --target .device-carry/site hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 pyautoattack==0.2.0
	rm -rf .device-carry/site/pyautoattack/examples .device-carry/site/bin   # 43 MB of example weights nobody needs: the carried folder stays small
	cp ../shared/data/cifar10-jpeg-q75.tar.gz .device-carry/

clean-outputs:  ## remove Hydra's per-run log folders (never the store)
	rm -rf outputs multirun
