"""Weighted averages of models, attacked as one model.

`Ensemble(members, weights, combine)` is an `nn.Module`: an attack given an ensemble differentiates
through every member at once (the paper's eq. 2), never through one member at a time.

* `combine="logits"` (default): sum_k w_k * f_k(x).
* `combine="probs"`: log sum_k w_k softmax(f_k(x)), computed as logsumexp_k(log w_k + log_softmax f_k)
  (never the log of a mean of softmaxes, which underflows); the output is a log-probability
  vector, so cross-entropy on it is the loss of the averaged probabilities.

Members run in a plain loop by default; `impl="vmap"` evaluates identical architectures with
`torch.func.functional_call` vmapped over stacked parameters (kept as an option: on a 2-core CPU
it was about 4x slower than the loop; benchmark it on your device).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from robust_ensembles.core.errors import ConfigError

COMBINES = ("logits", "probs")
IMPLS = ("loop", "vmap")


def check_simplex(weights: Sequence[float], n: int, tol: float, key: str = "ensemble.weights") -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(f"{key} has {len(weights)} entries for {n} members; give one weight per member.")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1) > tol:
        raise ConfigError(f"{key}={weights} must be non-negative and sum to 1 (they sum to {sum(weights):.6g}); "
                          f"normalise them or leave weights unset for a uniform average.")
    return weights


def _normalization(member: nn.Module):
    norm = getattr(member, "normalize", None)
    return None if norm is None else (norm.mean.flatten().tolist(), norm.std.flatten().tolist())


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 combine: str = "logits", impl: str = "loop", simplex_tol: float = 1e-6):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member (K >= 1).")
        if combine not in COMBINES:
            raise ConfigError(f"ensemble.combine={combine!r} is unknown; use one of {list(COMBINES)}.")
        if impl not in IMPLS:
            raise ConfigError(f"ensemble.impl={impl!r} is unknown; use one of {list(IMPLS)}.")
        classes = {getattr(m, "num_classes", None) for m in members}
        if len(classes) > 1:
            raise ConfigError(f"ensemble members predict different numbers of classes {sorted(map(str, classes))}; "
                              f"ensemble models trained on the same data.")
        norms = {repr(_normalization(m)) for m in members if _normalization(m) is not None}
        if len(norms) > 1:
            raise ConfigError(f"ensemble members use different input normalizations {sorted(norms)}; "
                              f"members must be trained with the same data.normalization.")
        k = len(members)
        w = [1.0 / k] * k if weights is None else check_simplex(weights, k, simplex_tol)
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32))
        self.combine, self.impl = combine, impl
        self.num_classes = classes.pop()
        if impl == "vmap":
            self._check_same_architecture()

    def _check_same_architecture(self):
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.state_dict().items()) for m in self.members}
        if len(shapes) > 1:
            raise ConfigError("ensemble.impl=vmap needs members of one architecture; use ensemble.impl=loop.")

    def member_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, C) logits of every member."""
        if self.impl == "loop":
            return torch.stack([m(x) for m in self.members])
        params, buffers = torch.func.stack_module_state(list(self.members))
        base = self.members[0]

        def one(p, b, inp):
            return torch.func.functional_call(base, (p, b), (inp,))

        return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "loop" and self.combine == "logits":  # no (K, N, C) stack needed
            out = self.weights[0] * self.members[0](x)
            for w, m in zip(self.weights[1:], self.members[1:]):
                out = out + w * m(x)
            return out
        outs = self.member_outputs(x)
        w = self.weights.view(-1, 1, 1).to(outs.dtype)
        if self.combine == "logits":
            return (w * outs).sum(0)
        return torch.logsumexp(torch.log(w) + torch.log_softmax(outs, dim=-1), dim=0)
