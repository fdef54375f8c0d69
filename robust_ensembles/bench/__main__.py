"""Speed, measured side by side in one run: `python -m robust_ensembles.bench` (or `make bench`).

Every comparison interleaves its contenders (A, B, A, B, ...) over `bench.repeats` rounds after
`bench.warmup` untimed calls, and reports the median ratio with its min and max over rounds:

1. a PGD-k adversarial training step / a clean training step (floor 1 + 2k/3; target <= 1.1 x floor);
2. the "common" PGD (loss.backward() into the weights on every step) / ours (target >= 1.25);
3. torchattacks.PGDL2 / ours at the same steps and step size (target >= 1.0), with both
   accuracies and their standard errors on `bench.accuracy_n` points;
4. ensemble forward + input gradient, K members: loop, torch.func vmap, loop + channels_last;
5. on a CPU: the aggregate training images per second of n one-thread processes started together
   (`make tables JOBS=n`) / one process with `bench.threads` (target >= `bench.cpu_jobs.target`).

Other modes (`bench.mode=...`, one module each in this package, registered in `bench.modes.MODES`): `gpu_epoch`
(one paper-scale epoch on the GPU fast path), `profile`, `eval_attacks` (candidate evaluation attacks against
AutoAttack, docs/evaluation.md), `tables_eval` (the tables' whole evaluation per evaluation setting, one after
the other), `precision`, `alpha_search` (docs/recommend.md), `store_digest`.
"""

from __future__ import annotations

from robust_ensembles.bench.modes import bench
from robust_ensembles.core import cli

main = cli.main("bench")(bench)

if __name__ == "__main__":
    main()
