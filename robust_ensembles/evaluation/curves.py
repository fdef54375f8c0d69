"""Accuracy under attack as a function of epsilon, for whatever model is evaluated (a single
model, an ensemble, a composite), attacked as one model.

For every test point we record the smallest radius on the grid at which the attack flipped it
(`min_flip`; 0 when it is misclassified clean, inf when never flipped), and with per_eps=True
whether it stood at each radius (`correct_at`): the per-point outcomes a store record keeps. The *cumulative* accuracy
at eps is the fraction with `min_flip > eps`, so the curve is non-increasing by construction: with the scan,
accuracy under the strongest attack found at that radius or below; with a search of the grid (guided,
bisect), each flip radius is confirmed by the radius below it standing, and a point that stood at a larger
radius counts as standing at eps (`describe_search`). The *per-eps* accuracy is what
the attack at eps alone achieved (the usual number; its monotonicity is a sanity check).

AUC(eps_t) = (1/eps_t) * trapezoid integral of the cumulative accuracy over [0, eps_t] (paper, sec. 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch

from robust_ensembles.attacks.autoattack import APGD
from robust_ensembles.attacks.pgd import PGD
from robust_ensembles.core.errors import ConfigError


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n points."""
    if n <= 0:
        raise ConfigError("a standard error needs at least one test point")
    return math.sqrt(max(acc * (1 - acc), 0.0) / n)


def check_grid(eps_grid: Sequence[float], key: str = "evaluation.eps_grid") -> list[float]:
    grid = sorted({float(e) for e in eps_grid})
    if not grid or grid[0] < 0:
        raise ConfigError(f"{key}={list(eps_grid)} must be non-empty radii >= 0.")
    return grid if grid[0] == 0 else [0.0, *grid]


def auc(eps: Sequence[float], acc: Sequence[float], eps_t: float) -> float:
    """(1/eps_t) * trapezoid integral of acc over [0, eps_t]; eps_t must be a grid point."""
    if eps_t <= 0:
        raise ConfigError(f"evaluation.auc_eps={eps_t} must be > 0.")
    if not any(math.isclose(e, eps_t) for e in eps):
        raise ConfigError(f"evaluation.auc_eps={eps_t} is not on the grid {list(eps)}; add it to evaluation.eps_grid.")
    pts = [(e, a) for e, a in zip(eps, acc) if e <= eps_t + 1e-12]
    area = sum((e1 - e0) * (a0 + a1) / 2 for (e0, a0), (e1, a1) in zip(pts, pts[1:]))
    return area / eps_t


@dataclass
class Curve:
    eps: list[float]
    cumulative: list[float]
    per_eps: list[float] | None
    n: int
    max_norm_ratio: float = 0.0      # max over examples and radii of ||x_adv - x|| / eps (<= 1 inside the ball)
    pixel_range: tuple[float, float] = (0.0, 1.0)
    stderr: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.stderr = [standard_error(a, self.n) for a in self.cumulative]

    def at(self, eps: float, cumulative: bool = True) -> float:
        values = self.cumulative if cumulative else self.per_eps
        for e, a in zip(self.eps, values):
            if math.isclose(e, eps):
                return a
        raise ConfigError(f"eps={eps} is not on the evaluated grid {self.eps}; add it to evaluation.eps_grid.")

    def auc(self, eps_t: float) -> float:
        return auc(self.eps, self.cumulative, eps_t)

    def to_dict(self) -> dict:
        return asdict(self)


def curve_from_min_flip(min_flip: torch.Tensor, eps: list[float], per_eps_correct: torch.Tensor | None,
                        max_norm_ratio: float = 0.0, pixel_range=(0.0, 1.0)) -> Curve:
    n = len(min_flip)
    cumulative = [(min_flip > e).float().mean().item() for e in eps]
    per_eps = None if per_eps_correct is None else (per_eps_correct.float() / n).tolist()
    return Curve(eps, cumulative, per_eps, n, max_norm_ratio, tuple(pixel_range))


@dataclass
class GridAttack:
    """One batch attacked at every radius of a grid: per point the smallest radius that flipped it
    (`min_flip`; 0 = wrong on the clean input, inf = never), with per_eps its outcome at each radius
    (`correct_at`), and the largest perturbation / radius and pixel range seen (sanity checks)."""
    min_flip: torch.Tensor
    correct_at: torch.Tensor | None
    max_norm_ratio: float
    lo: float
    hi: float


def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


class _Extent:
    """The largest perturbation / radius and the pixel range of every adversarial example seen (sanity checks)."""

    def __init__(self, norm: str):
        self.norm, self.ratio, self.lo, self.hi = norm, 0.0, math.inf, -math.inf

    def add(self, x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor) -> None:
        delta = (x_adv - x).flatten(1)
        size = delta.norm(dim=1) if self.norm == "l2" else delta.abs().amax(1)
        self.ratio = max(self.ratio, (size / eps).max().item())
        self.lo, self.hi = min(self.lo, x_adv.min().item()), max(self.hi, x_adv.max().item())


SEARCHES = ("scan", "bisect", "probe_bisect", "guided")


def describe_search(search: str, first_order_step: bool = False) -> str:
    """Where a curve made with `search` attacked each point, in the words a table footer uses."""
    if search == "scan":
        return "at every grid radius up to eps"
    step = (", a point's first radius tried first by a step along its first-order estimate's direction"
            if first_order_step else "")
    return (f"at the grid radii its {search} search chose per point{step} (each flip radius confirmed by the attack at "
            f"the radius below it failing; a point that stood at a radius >= eps counts as standing at eps, "
            f"which assumes the attack succeeds more often at larger radii)")


def boundary_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """A first-order estimate of each point's distance to the decision boundary: its logit margin over
    the most likely wrong class divided by the dual norm of that margin's input gradient (one step of
    DeepFool, Moosavi-Dezfooli et al. 2016). One forward and backward pass through the whole model; 0
    where the point is already misclassified, inf where the gradient vanishes."""
    return first_order_estimate(model, x, y, norm)[0]


def first_order_estimate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                         norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, direction): `boundary_distance`, and per point the unit direction (in `norm`) in which that
    margin falls fastest, -g/||g||_2 for L2 and -sign(g) for Linf (zero where the gradient vanishes): a
    step of the distance along it reaches the boundary of the margin's linearisation. Both from one forward
    and backward pass through the whole model."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        z = model(x)
        rows = torch.arange(len(y), device=y.device)
        wrong = z.detach().clone()
        wrong[rows, y] = -math.inf
        margin = z[rows, y] - z[rows, wrong.argmax(1)]
        (grad,) = torch.autograd.grad(margin.sum(), x)
    g = grad.flatten(1)
    dual = g.norm(dim=1) if norm == "l2" else g.abs().sum(1)  # the dual of L2 is L2, of Linf is L1
    margin = margin.detach().clamp_min(0)
    safe = dual.clamp_min(torch.finfo(dual.dtype).tiny)
    distance = torch.where(dual > 0, margin / safe, torch.full_like(margin, math.inf))
    direction = -g / safe[:, None] if norm == "l2" else -g.sign()
    return distance, direction.view_as(grad)


def check_search(search: str, per_eps: bool, warm_start: bool = False, attack=None, guess_scale: float = 1.0,
                 first_order_step: bool = False) -> None:
    """`evaluation.search`, `evaluation.per_eps`, `evaluation.warm_start`, `evaluation.guess_scale` and
    `evaluation.first_order_step` together, checked before anything runs."""
    if not isinstance(first_order_step, bool):
        raise ConfigError(f"evaluation.first_order_step={first_order_step!r} must be true or false.")
    if first_order_step and search != "guided":
        raise ConfigError(f"evaluation.first_order_step=true steps along the guided search's first-order estimate, "
                          f"which evaluation.search={search} does not make; set evaluation.search=guided, or "
                          f"evaluation.first_order_step=false.")
    if isinstance(guess_scale, bool) or not isinstance(guess_scale, (int, float)) or not guess_scale > 0:
        raise ConfigError(f"evaluation.guess_scale={guess_scale!r} must be a number > 0 (1.0: the first-order estimate itself).")
    if warm_start and attack is not None and not getattr(attack, "supports_warm_start", False):
        raise ConfigError(f"evaluation.warm_start=true needs an attack that starts from a given point "
                          f"(attack@evaluation.attack=apgd_eval); {attack!r} does not.")
    if search not in SEARCHES:
        raise ConfigError(f"evaluation.search={search!r} is unknown; use one of {list(SEARCHES)}.")
    if search != "scan" and per_eps:
        raise ConfigError(f"evaluation.search={search} gives each point's smallest flipping radius, not its outcome "
                          f"at every radius; set evaluation.per_eps=false, or evaluation.search=scan.")


def attack_grid(model: torch.nn.Module, attack, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                per_eps: bool, search: str = "scan", warm_start: bool = False, guess_scale: float = 1.0,
                first_order_step: bool = False) -> GridAttack:
    """Each point's smallest flipping radius on the grid `eps` (which starts at 0, `check_grid`).

    search="scan": radius after radius upward; per_eps=True attacks every point at every radius (its
    outcome at each), per_eps=False only the points still standing (cumulative outcomes only, cheaper).
    search="bisect": per point, a bisection over the grid (`bisect_grid`): about log2(len(eps)) attacks
    per point instead of one per radius it survives; cumulative outcomes only. search="probe_bisect":
    every point first at the grid's smallest radius, then a bisection for the points it leaves standing
    (a model whose points mostly flip there, e.g. a natural one, pays one attack per point).
    search="guided": every point first at the grid radius at or above `guess_scale` times its first-order
    distance to the boundary (`boundary_distance`), then at the neighbouring radius on the side still
    open (below if it flipped, above if it stood), then a bisection: about 2 attacks per point where the
    guess is within one grid step, 1 for a point that stands at the grid's largest radius.
    first_order_step=True (guided only): before its first attack, each point is moved by that first radius
    along the direction its first-order estimate came with (`first_order_estimate`: one forward pass more,
    the gradient is the guess's); a point that flips there is not attacked at that radius (its flip is an
    adversarial example inside the ball, confirmed from below like any other).
    warm_start=True: each point's attack starts from the perturbation its last attack found (at the
    previous radius, or another radius of the bisection), scaled onto the new sphere; its first from a
    random point of the sphere, through the same single-start path."""
    check_search(search, per_eps, warm_start, attack, guess_scale, first_order_step)
    if search != "scan" and len(eps) > 1:  # (a grid of 0 alone is clean accuracy: nothing to search)
        first, step = None, None
        if search == "guided":
            model.eval()
            distance, direction = first_order_estimate(model, x, y, attack.norm)
            first = torch.searchsorted(torch.tensor(list(eps), device=x.device, dtype=distance.dtype),
                                       distance * guess_scale)
            step = direction if first_order_step else None
        elif search == "probe_bisect":
            first = torch.ones(len(y), dtype=torch.long, device=x.device)
        return bisect_grid(model, attack, x, y, eps, first=first, then_neighbour=search == "guided",
                           warm_start=warm_start, first_step=step)
    model.eval()
    correct = predict(model, x) == y
    min_flip = torch.where(correct, torch.tensor(math.inf, device=x.device), torch.tensor(0.0, device=x.device))
    correct_at = None
    if per_eps:  # every point attacked at every radius: its outcome at each
        correct_at = torch.zeros(len(y), len(eps), dtype=torch.bool, device=x.device)
        correct_at[:, 0] = correct
    extent = _Extent(attack.norm)
    last = x.clone()  # each point's last adversarial example (warm_start; x itself: a random start on the sphere)
    for i, e in enumerate(eps[1:], start=1):
        todo = torch.ones_like(correct) if per_eps else min_flip > eps[i - 1]
        if not todo.any():
            continue
        rows = todo.nonzero().squeeze(1)
        x_adv = attack(model, x[todo], y[todo], eps=e, **({"x_init": last[todo]} if warm_start else {}))
        if warm_start:
            last[rows] = x_adv
        extent.add(x[todo], x_adv, torch.tensor(e, device=x.device))
        fooled = predict(model, x_adv) != y[todo]
        if per_eps:
            correct_at[rows, i] = ~fooled
        idx = rows[fooled]
        min_flip[idx] = torch.minimum(min_flip[idx], torch.tensor(e, device=x.device))
    return GridAttack(min_flip, correct_at, extent.ratio, extent.lo, extent.hi)


def bisect_grid(model: torch.nn.Module, attack, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float],
                first: torch.Tensor | None = None, then_neighbour: bool = False,
                warm_start: bool = False, first_step: torch.Tensor | None = None) -> GridAttack:
    """Per point, the smallest radius of the grid at which `attack` flipped it, found by bisection over
    the grid's indices: `lo` is the largest index known to stand (0: correct on the clean input), `hi`
    the smallest known to flip (len(eps): none yet); each round attacks every unresolved point at its
    midpoint (points grouped by radius, one attack call per radius) until hi = lo + 1. So the radius
    below a point's flip radius has always been attacked and stood: the flip radius is confirmed.
    `first`: per point, the grid index of its first round (clamped to the open interval) instead of the
    midpoint; `then_neighbour`: its second round at the index next to it on the side still open.
    `warm_start`: a point's attacks after its first start from its last one's perturbation.
    `first_step`: per point a unit direction (in the attack's norm); in the first round each point is first
    moved by the round's radius along it (kept in [0, 1]), and only the points that stand there are attacked.
    Assumes the attack's success grows with the radius, which the full scan does not need: the bench
    (`make bench-eval-attacks`) measures what that costs against the scan, point by point."""
    model.eval()
    n, top = len(y), len(eps)
    radii = torch.tensor(list(eps), device=x.device)
    correct = predict(model, x) == y
    lo = torch.zeros(n, dtype=torch.long, device=x.device)
    hi = torch.where(correct, torch.full_like(lo, top), torch.zeros_like(lo))  # wrong on the clean input: flips at 0
    extent = _Extent(attack.norm)
    last = x.clone()  # each point's last adversarial example (warm_start; x itself: a random start on the sphere)
    start = None if first is None else first.to(lo.device).clamp(1, top - 1)
    rounds = 0
    while (open_ := hi - lo > 1).any():
        if rounds == 0 and start is not None:
            mid = torch.where(open_, start, lo)
        elif rounds == 1 and start is not None and then_neighbour:
            mid = torch.where(hi == start, hi - 1, lo + 1)
        else:
            mid = (lo + hi) // 2
        rounds += 1
        for m in mid[open_].unique().tolist():
            rows = (open_ & (mid == m)).nonzero().squeeze(1)
            if rounds == 1 and first_step is not None:
                x_step = (x[rows] + eps[m] * first_step[rows]).clamp(0, 1)
                flipped = predict(model, x_step) != y[rows]
                if flipped.any():
                    took = rows[flipped]
                    last[took] = x_step[flipped]
                    extent.add(x[took], x_step[flipped], radii[m])
                    hi[took] = m
                    rows = rows[~flipped]
                if not len(rows):
                    continue
            x_adv = attack(model, x[rows], y[rows], eps=eps[m], **({"x_init": last[rows]} if warm_start else {}))
            last[rows] = x_adv
            extent.add(x[rows], x_adv, radii[m])
            fooled = predict(model, x_adv) != y[rows]
            hi[rows[fooled]] = m
            lo[rows[~fooled]] = m
    min_flip = torch.where(hi < top, radii[hi.clamp(max=top - 1)], torch.tensor(math.inf, device=x.device))
    return GridAttack(min_flip, None, extent.ratio, extent.lo, extent.hi)


class EnsembleEvaluation(pl.LightningModule):
    """`trainer.test` runs the attack at every radius of the grid (`attack_grid`); `self.curve` holds the result.

    per_eps=True attacks every point at every radius (per-eps and cumulative curves);
    per_eps=False attacks only the points still standing (cumulative curve only, cheaper).
    """

    def __init__(self, model: torch.nn.Module, attack: PGD | APGD, eps_grid: Sequence[float], per_eps: bool,
                 search: str = "scan", warm_start: bool = False, guess_scale: float = 1.0,
                 first_order_step: bool = False):
        super().__init__()
        self.model = model.eval()
        self.attack = attack
        self.eps = check_grid(eps_grid)
        check_search(search, per_eps, warm_start, attack, guess_scale, first_order_step)
        self.per_eps, self.search, self.warm_start, self.guess_scale = per_eps, search, warm_start, guess_scale
        self.first_order_step = first_order_step
        self.curve: Curve | None = None
        self.min_flip: torch.Tensor | None = None      # (n,) per point, after the test epoch
        self.correct_at: torch.Tensor | None = None    # (n, len(eps)) bool, per_eps=True only

    def on_test_epoch_start(self):
        self._min_flip, self._correct = [], []
        self._max_ratio, self._lo, self._hi = 0.0, math.inf, -math.inf

    def test_step(self, batch, batch_idx):
        x, y = batch
        g = attack_grid(self.model, self.attack, x, y, self.eps, self.per_eps, self.search, self.warm_start,
                        self.guess_scale, self.first_order_step)
        self._max_ratio, self._lo, self._hi = max(self._max_ratio, g.max_norm_ratio), min(self._lo, g.lo), max(self._hi, g.hi)
        self._min_flip.append(g.min_flip.cpu())
        if self.per_eps:
            self._correct.append(g.correct_at.cpu())

    def on_test_epoch_end(self):
        min_flip = self.min_flip = torch.cat(self._min_flip)
        self.correct_at = torch.cat(self._correct) if self.per_eps else None
        lo, hi = (self._lo, self._hi) if self._hi > -math.inf else (0.0, 1.0)
        per_eps_correct = None if self.correct_at is None else self.correct_at.sum(0)
        self.curve = curve_from_min_flip(min_flip, self.eps, per_eps_correct, self._max_ratio, (lo, hi))
        self.log_dict({f"test/acc@{e:g}": a for e, a in zip(self.eps, self.curve.cumulative)})


def curve_of(record: dict) -> Curve:
    """The Curve of a stored curve record."""
    c = record["curve"]
    return Curve(c["eps"], c["cumulative"], c["per_eps"], c["n"], c["max_norm_ratio"], tuple(c["pixel_range"]))


def plot_curves(rows: dict[str, Curve], path: Path, title: str,
                points: dict[str, list[tuple[float, float, float]]] | None = None) -> None:
    """Accuracy vs epsilon, one line per model, error bars = binomial standard errors; `points`
    adds reference markers (label -> [(eps, accuracy, standard error)]) without a line."""
    fig, ax = new_figure((6, 4))
    for label, c in rows.items():
        ax.errorbar(c.eps, c.cumulative, yerr=c.stderr, marker="o", ms=3, capsize=2, label=label)
    for label, pts in (points or {}).items():
        eps, acc, se = zip(*pts)
        ax.errorbar(eps, acc, yerr=se, fmt="k*", ms=9, capsize=3, label=label, zorder=5)
    ax.set_xlabel("L2 attack radius epsilon ([0,1] pixels)")
    ax.set_ylabel("accuracy (strongest attack at <= eps)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def new_figure(figsize: tuple[float, float]):
    """(figure, axes) drawn off-screen (matplotlib's Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Lay out, write to `path` (its folder made) and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
