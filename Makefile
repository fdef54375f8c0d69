# robust-ensembles: `make help` lists the targets.
PYTHON ?= python
ARGS ?=

.PHONY: help install test test-slow train-cpu train-paper clean-outputs

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

install:  ## install the project and its test tools into the current environment
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## fast tests (the CI run; minutes on 2 cores)
	$(PYTHON) -m pytest -m "not slow"

test-slow:  ## slow tests (real CIFAR-10 archive, longer runs)
	$(PYTHON) -m pytest -m slow

train-cpu:  ## CPU scale: 2 natural + 2 alpha=0.25 models on the JPEG archive (ARGS=... adds overrides)
	$(PYTHON) -m robust_ensembles.train -m experiment=cpu alpha=0,0.25 'seed=range(2)' $(ARGS)

train-paper:  ## paper scale (GPU): ResNet18 at alpha 0.22 and 0.5, 8 seeds each (ARGS=... adds overrides)
	$(PYTHON) -m robust_ensembles.train -m experiment=paper alpha=0.22,0.5 'seed=range(8)' $(ARGS)

clean-outputs:  ## remove Hydra's per-run log folders (never the store)
	rm -rf outputs multirun
