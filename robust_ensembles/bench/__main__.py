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

`bench.mode=gpu_epoch` instead times one paper-scale epoch (ResNet18, PGD-7 at 0.5) and a clean
epoch on the GPU fast path (data resident on the device, channels_last, bf16 autocast).
`bench.mode=eval_attacks` compares candidate evaluation attacks with AutoAttack on stored models
(accuracy gap and curve cost as a ratio to PGD-20; docs/evaluation.md).
`bench.mode=alpha_search` counts the models each search strategy of the alpha recommender trains on
stand-in stores whose robust gap is a known function of alpha (docs/recommend.md).
"""

from __future__ import annotations

from robust_ensembles.bench.modes import bench
from robust_ensembles.core import cli

main = cli.main("bench")(bench)

if __name__ == "__main__":
    main()
