"""The store: every result the framework computes, keyed by the hash of what determines it.

Two kinds of entry, one root (`store.root`, default `<checkout>/store`, env `RE_STORE`):

Trained models (single models and composites): one folder per model.

    <store>/<key>/identity.json   the config keys that determine the weights (hashed into <key>)
                 /config.yaml     the full resolved config of the run that made it
                 /checkpoints/    Lightning checkpoints (last.ckpt for resuming, best.ckpt)
                 /model.pt        state_dict of the kept epoch (best validation adversarial accuracy)
                 /model_last.pt   state_dict of the last epoch
                 /metrics.json    kept and last epoch, validation and test metrics, wall time, images/s
                 /COMPLETE        written last: only then is the entry used or skipped

Records (what an evaluation measured): one JSON file per record, `get_record` / `put_record`.

    <store>/records/<kind>/<key>.json   kind: `curve` (accuracy vs eps of one evaluated model) or
                                        `autoattack` (AutoAttack and PGD at one eps on the first n points)
                       /<key>.png       the curve's plot, beside a curve record

A record holds {kind, version, key, spec, ...}: `spec` is what determines it (members' store keys,
weights, attack settings, test points; hashed into <key>), `version` the semantics version of the
code that computed it. A record whose version differs from the code's is stale: it is reported
("stale record ... recomputing") and recomputed, never reused. Records keep per-point outcomes
(which test points each attack flipped, at which radius), so later attacks and paired statistics
reuse them without recomputing.

Every file is written to a temporary file and renamed (`write_atomic`, `save_atomic`), so a kill
during a write leaves the previous complete file. The store imports no model code: it returns
identities, configs, weights and records; `robust_ensembles.members` builds models from them.

Which config keys make a model's identity is itself config (`store.identity.include/exclude`), so
paths, loggers and speed knobs never change a hash. Numbers are canonicalised before hashing
(`alpha=0` and `alpha=0.0` are the same run).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import PROJECT_ROOT
from robust_ensembles.errors import CheckpointError, StoreBusyError

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_ABSENT = object()


# ----------------------------------------------------------------------------- identity
def _select(container: Mapping, dotted: str) -> tuple[bool, Any]:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _assign(container: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        container = container.setdefault(part, {})
    container[leaf] = value


def _drop(container: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        container = container.get(part)
        if not isinstance(container, dict):
            return
    container.pop(leaf, None)


def identity_of(cfg: DictConfig, include: Iterable[str], exclude: Iterable[str]) -> dict:
    """The resolved values of the `include` keys of cfg, less the `exclude` keys."""
    identity: dict = {}
    for key in include:
        node = OmegaConf.select(cfg, key, default=_ABSENT)
        if node is _ABSENT:
            continue
        _assign(identity, key, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    for key in exclude:
        _drop(identity, key)
    return identity


def canonical(value: Any) -> Any:
    """Numbers as floats (so 0 == 0.0), dicts sorted by json; bools and strings unchanged."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot hash config value {value!r} of type {type(value).__name__}")


def key_of(identity: Mapping) -> str:
    blob = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None


# ----------------------------------------------------------------------------- files
def _replace_from_tmp(path: Path, write) -> None:
    """write(tmp) then rename onto path: readers see the old complete file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    _replace_from_tmp(path, lambda tmp: tmp.write_text(text))


def save_atomic(obj: Any, path: Path) -> None:
    _replace_from_tmp(path, lambda tmp: torch.save(obj, tmp))


def load_weights(path: Path | str) -> dict:
    """torch.load(weights_only=True) with an error that names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; retrain the entry (delete {path.parent} and rerun its train command).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike mean: this file cannot be trusted
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights file ({type(e).__name__}: {e}); "
                              f"delete {path.parent} and rerun its train command.") from None


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One store entry: a folder named by the identity's hash."""

    path: Path
    identity: dict

    @classmethod
    def at(cls, path: Path) -> "Run":
        """The entry stored at `path` (its identity read from disk)."""
        return cls(path, json.loads((path / "identity.json").read_text()))

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return (self.path / MARKER).is_file()

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def resume_checkpoint(self) -> str | None:
        """The last Lightning checkpoint to resume from; one torn by a kill is set aside, not trusted."""
        last = self.checkpoint_dir / "last.ckpt"
        if not last.is_file():
            return None
        try:
            load_weights(last)
        except CheckpointError as e:
            log.warning("%s; moved aside to %s.corrupt, training this entry from the start", e, last.name)
            os.replace(last, last.with_suffix(".ckpt.corrupt"))
            return None
        return str(last)

    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    def config(self) -> DictConfig:
        return OmegaConf.load(self.path / "config.yaml")

    @contextlib.contextmanager
    def lock(self):
        """Exclusive hold on the entry, so two jobs never train the same model at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusyError(f"another job is training {self.path} right now; rerun this one when it ends "
                                     f"(it will then be skipped or resumed).") from None
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def begin(self, cfg: DictConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / "identity.json", json.dumps(self.identity, indent=2, sort_keys=True))
        write_atomic(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    def finish(self, best: dict, last: dict, metrics: dict) -> None:
        """Write weights and metrics, then the completion marker (last, atomically)."""
        save_atomic(best, self.path / "model.pt")
        save_atomic(last, self.path / "model_last.pt")
        write_atomic(self.path / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        write_atomic(self.path / MARKER, json.dumps({"key": self.key}))

    def weights(self, which: str = "model.pt") -> dict:
        """The stored state_dict (kept epoch by default; `model_last.pt` for the last)."""
        return load_weights(self.path / which)

    def sibling(self, key: str) -> "Run":
        """Another entry of the same store, by key (a composite's backbones)."""
        return Run.at(self.path.parent / key)


def open_run(root: str | Path, identity: dict) -> Run:
    return Run(Path(root).expanduser() / key_of(identity), identity)


def query(root: str | Path, where: Mapping[str, Any], seeds: Iterable[int] | None = None) -> list[Run]:
    """Complete entries whose identity matches every dotted key of `where` (and one of `seeds`), by seed."""
    root = Path(root).expanduser()
    wanted = {k: canonical(v) for k, v in where.items()}
    seeds = None if seeds is None else {float(s) for s in seeds}
    runs = []
    for marker in sorted(root.glob(f"*/{MARKER}")):
        run = Run.at(marker.parent)
        if all(_select(run.identity, k)[0] and canonical(_select(run.identity, k)[1]) == v for k, v in wanted.items()):
            if seeds is None or float(run.identity.get("seed", -1)) in seeds:
                runs.append(run)
    return sorted(runs, key=lambda r: r.identity.get("seed", 0))


# ----------------------------------------------------------------------------- records
RECORDS = "records"


def record_path(root: str | Path, kind: str, spec: Mapping, key: str | None = None) -> Path:
    """Where the record of `kind` for `spec` lives (`key`: key_of(spec), when the caller has it)."""
    return Path(root).expanduser() / RECORDS / kind / f"{key or key_of(spec)}.json"


def get_record(root: str | Path, kind: str, spec: Mapping, version: int) -> dict | None:
    """The stored record of `kind` for `spec`, or None when there is none or it is stale
    (computed by code of another semantics version: reported, and left to be recomputed)."""
    path = record_path(root, kind, spec)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        log.warning("[store] unreadable %s record %s (%s): recomputing", kind, path, e)
        return None
    if record.get("version") != version:
        log.warning("[store] stale %s record %s (semantics version %s, this code writes %s): recomputing",
                    kind, path, record.get("version"), version)
        return None
    return record


def records(root: str | Path, kind: str, version: int) -> list[dict]:
    """Every readable record of `kind` at this semantics version (e.g. to estimate costs from)."""
    out = []
    for path in sorted(record_path(root, kind, {}, key="any").parent.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if record.get("version") == version:
            out.append(record)
    return out


def put_record(root: str | Path, kind: str, spec: Mapping, version: int, payload: Mapping) -> dict:
    """Write a record atomically; returns it as stored (payload plus kind, version, key, spec)."""
    key = key_of(spec)
    record = {**payload, "kind": kind, "version": version, "key": key, "spec": canonical_json(spec)}
    write_atomic(record_path(root, kind, spec, key), json.dumps(record, indent=2, sort_keys=True))
    return record


def canonical_json(value: Any) -> Any:
    """`value` as plain JSON types (what a record's spec is stored as)."""
    return json.loads(json.dumps(value))
