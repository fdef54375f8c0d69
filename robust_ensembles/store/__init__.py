"""The store: every result the framework computes, keyed by the hash of what determines it.

Two kinds of entry, one root (`store.root`, default `<checkout>/store`, env `RE_STORE`):

Trained models (single models and composites): one folder per model.

    <store>/<key>/identity.json   the config keys that determine the weights (hashed into <key>)
                 /config.yaml     the full resolved config of the run that made it
                 /checkpoints/    Lightning checkpoints (last.ckpt for resuming, best.ckpt)
                 /model.pt        state_dict of the kept epoch (best validation adversarial accuracy)
                 /model_last.pt   state_dict of the last epoch
                 /metrics.json    kept and last epoch, validation and test metrics, wall time, images/s
                 /COMPLETE        written last: only then is the entry used or skipped; it holds the
                                  sha256 and size of every file above (the entry's manifest)

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

Integrity: a complete entry's files are checked against its manifest when they are read (weights,
metrics, config), and its identity against its folder name; a mismatch is a `StoreIntegrityError`
that names the entry and the fix, never a number from damaged weights. A record carries the sha256
of its own content; a damaged or truncated one is reported and recomputed. `python -m
robust_ensembles.store verify` checks everything, like `git fsck`.

Keys from meaning: identities and record specs name the classes that built them by their stable
names (`robust_ensembles.core.registry`), not by module path, so moving code changes no key. The scheme
is versioned (`IDENTITY_SCHEME`, in every identity and in `<store>/STORE.json`); a store of an older
scheme is refused with the command that migrates it (`python -m robust_ensembles.store migrate`).

Jobs that meet another's lock on an entry wait for it (`store.lock.timeout_s`), then skip or resume
the entry; a lock is a flock, so it dies with its job (`locks`).

Every file is written to a temporary file and renamed (`core.atomic_files`), so a kill
during a write leaves the previous complete file. The store imports no model code: it returns
identities, configs, weights and records; `robust_ensembles.models.members` builds models from them.

Which config keys make a model's identity is itself config (`store.identity.include/exclude`), so
paths, loggers and speed knobs never change a hash. Numbers are canonicalised before hashing
(`alpha=0` and `alpha=0.0` are the same run).
"""

from __future__ import annotations

import datetime
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
from robust_ensembles.core import atomic_files, registry
from robust_ensembles.core.errors import CheckpointError, StoreIntegrityError, StoreSchemeError
from robust_ensembles.store.locks import EntryLock

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STORE_FILE = "STORE.json"   # <store>/STORE.json: {"identity_scheme": n}
IDENTITY_SCHEME = 2         # 1: targets by module path; 2: by stable name (registry), "scheme" in every identity
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
    """The resolved values of the `include` keys of cfg, less the `exclude` keys, with targets by
    stable name and the identity scheme."""
    identity: dict = {}
    for key in include:
        node = OmegaConf.select(cfg, key, default=_ABSENT)
        if node is _ABSENT:
            continue
        _assign(identity, key, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
    for key in exclude:
        _drop(identity, key)
    return {**registry.meaning(identity), "scheme": IDENTITY_SCHEME}


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
    """The 16-hex key of an identity or record spec (its targets by stable name, its numbers canonical)."""
    blob = json.dumps(canonical(registry.meaning(identity)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- the store's scheme
_CURRENT_ROOTS: set[Path] = set()


def scheme_of(root: str | Path) -> int | None:
    """The identity scheme of the store at root: STORE.json's, 1 for entries written before it, None when empty."""
    root = Path(root).expanduser()
    try:
        return int(json.loads((root / STORE_FILE).read_text())["identity_scheme"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise StoreIntegrityError(f"{root / STORE_FILE} is unreadable ({e}); it should read "
                                  f'{{"identity_scheme": {IDENTITY_SCHEME}}} if every entry has a "scheme" in its '
                                  f"identity.json, else delete it and run python -m robust_ensembles.store migrate "
                                  f"paths.store_dir={root}") from None
    written = next(root.glob("*/identity.json"), None) or next(root.glob(f"{RECORDS}/*/*.json"), None)
    return 1 if written is not None else None


def require_current(root: str | Path) -> None:
    """Refuse a store written under an older identity scheme (its keys name module paths): one line
    with the command that migrates it, instead of retraining everything under new keys."""
    root = Path(root).expanduser()
    if root in _CURRENT_ROOTS:
        return
    scheme = scheme_of(root)
    if scheme is not None and scheme != IDENTITY_SCHEME:
        n = len(list(root.glob("*/identity.json")))
        raise StoreSchemeError(
            f"the store {root} was written under identity scheme {scheme} ({n} entries), this code keys scheme "
            f"{IDENTITY_SCHEME}; migrate it once (renames keys, retrains nothing): python -m robust_ensembles.store "
            f"migrate --apply paths.store_dir={root}")
    if scheme is not None:
        _CURRENT_ROOTS.add(root)


def mark_current(root: str | Path) -> None:
    """Write STORE.json (the scheme of this code) into a store that has none yet."""
    root = Path(root).expanduser()
    require_current(root)
    if not (root / STORE_FILE).is_file():
        atomic_files.write_atomic(root / STORE_FILE, json.dumps({"identity_scheme": IDENTITY_SCHEME}) + "\n")
    _CURRENT_ROOTS.add(root)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else None


# ----------------------------------------------------------------------------- files
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
def describe_identity(identity: Mapping) -> str:
    """alpha=.. seed=.. (or a composite's eps and backbones) for messages."""
    if "composite" in identity:
        c = identity["composite"]
        return f"composite ({c['robust']['alpha']}, {c['natural']['alpha']})@{c['eps']} seed={identity.get('seed')}"
    return f"alpha={identity.get('alpha')} seed={identity.get('seed')}"


_VERIFIED: dict[tuple, str] = {}   # (path, inode, size, mtime_ns, ctime_ns) -> sha256 found equal to the manifest's


@dataclass(frozen=True)
class Run:
    """One store entry: a folder named by the identity's hash."""

    path: Path
    identity: dict

    @classmethod
    def at(cls, path: Path) -> "Run":
        """The entry stored at `path` (its identity read from disk; a complete entry's identity must
        hash to its folder name, else it is damaged)."""
        ident_file = path / "identity.json"
        try:
            identity = json.loads(ident_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreIntegrityError(f"store entry {path.name} is damaged: identity.json is unreadable ({e}). "
                                      f"{_fix(path)}") from None
        run = cls(path, identity)
        if run.complete:
            run.verified("identity.json")  # a damaged identity must not answer a query for another model
            if key_of(identity) != path.name:
                raise StoreIntegrityError(f"store entry {path.name} ({describe_identity(identity)}) is damaged: its "
                                          f"identity.json hashes to {key_of(identity)}, not to its folder name. {_fix(path)}")
        return run

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

    # -- integrity
    def manifest(self) -> dict:
        """The completion marker: key, scheme, date and {file: {sha256, bytes}} of every file the entry serves."""
        try:
            marker = json.loads((self.path / MARKER).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreIntegrityError(f"store entry {self.key} ({describe_identity(self.identity)}) is damaged: its {MARKER} "
                                      f"marker is unreadable ({e}). {_fix(self.path)}") from None
        if not isinstance(marker.get("files"), dict):
            raise StoreIntegrityError(f"store entry {self.key} ({describe_identity(self.identity)}) records no digests of its "
                                      f"files (written before digests); python -m robust_ensembles.store migrate --apply "
                                      f"paths.store_dir={self.path.parent} records them.")
        return marker

    def problems(self, names: Iterable[str] | None = None) -> list[str]:
        """What is wrong with the files of this complete entry (all, or `names`) against its manifest."""
        files = self.manifest()["files"]
        out = []
        for name in (sorted(files) if names is None else names):
            path = self.path / name
            want = files.get(name)
            if want is None:
                out.append(f"{name} is not in its manifest")
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                out.append(f"{name} is missing")
                continue
            if st.st_size != want["bytes"]:
                out.append(f"{name} has {st.st_size} bytes, {want['bytes']} when the entry was completed")
                continue
            memo = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            found = _VERIFIED.get(memo) or sha256_file(path)
            if found != want["sha256"]:
                out.append(f"{name} has sha256 {found[:12]}..., {want['sha256'][:12]}... when the entry was completed")
            else:
                _VERIFIED[memo] = found
        return out

    def verified(self, name: str) -> Path:
        """Path of one file of this complete entry, checked against its manifest (an incomplete entry's
        files are not served: its training has not finished)."""
        if not self.complete:
            raise CheckpointError(f"store entry {self.key} ({describe_identity(self.identity)}) is incomplete (no "
                                  f"{MARKER} marker): its training has not finished. Rerun the command that trains it "
                                  f"(its config.yaml) to resume it.")
        bad = self.problems([name])
        if bad:
            raise StoreIntegrityError(f"store entry {self.key} ({describe_identity(self.identity)}) is damaged: "
                                      f"{'; '.join(bad)}. {_fix(self.path)}")
        return self.path / name

    def metrics(self) -> dict:
        return json.loads(self.verified("metrics.json").read_text())

    def config(self) -> DictConfig:
        return OmegaConf.load(self.verified("config.yaml"))

    def lock(self, timeout_s: float = 0, poll_s: float = 5.0) -> EntryLock:
        """Exclusive hold on the entry, so two jobs never train the same model at once: a job that meets
        another's lock waits for it up to `timeout_s` (then StoreBusyError); a lock dies with its job
        (`locks`). Re-check `complete` once held."""
        return EntryLock(self.path, timeout_s=timeout_s, poll_s=poll_s, what=f"{describe_identity(self.identity)} ({self.key})")

    def begin(self, cfg: DictConfig) -> None:
        mark_current(self.path.parent)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_files.write_atomic(self.path / "identity.json", json.dumps(self.identity, indent=2, sort_keys=True))
        atomic_files.write_atomic(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    def finish(self, best: dict, last: dict, metrics: dict) -> None:
        """Write weights and metrics, then the completion marker with every file's digest (last, atomically)."""
        atomic_files.save_atomic(best, self.path / "model.pt")
        atomic_files.save_atomic(last, self.path / "model_last.pt")
        atomic_files.write_atomic(self.path / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        self.seal()

    def served_files(self) -> list[str]:
        """The files a complete entry serves (what its manifest covers)."""
        names = ["identity.json", "config.yaml", "model.pt", "model_last.pt", "metrics.json"]
        names += [f"checkpoints/{p.name}" for p in sorted(self.checkpoint_dir.glob("*.ckpt"))]
        return [n for n in names if (self.path / n).is_file()]

    def seal(self, **extra: Any) -> dict:
        """Write the completion marker: the digest of every served file as it is now."""
        files = {n: {"sha256": sha256_file(self.path / n), "bytes": (self.path / n).stat().st_size}
                 for n in self.served_files()}
        marker = {"key": self.key, "identity_scheme": IDENTITY_SCHEME, "files": files,
                  "completed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}
        atomic_files.write_atomic(self.path / MARKER, json.dumps(marker, indent=2, sort_keys=True))
        return marker

    def weights(self, which: str = "model.pt") -> dict:
        """The stored state_dict (kept epoch by default; `model_last.pt` for the last), digest checked."""
        return load_weights(self.verified(which))

    def sibling(self, key: str) -> "Run":
        """Another entry of the same store, by key (a composite's backbones)."""
        return Run.at(self.path.parent / key)


def _fix(entry: Path) -> str:
    """The fix for a damaged entry."""
    return (f"Restore the folder {entry} from a copy, or delete it and rerun the command that trained it "
            f"(its config.yaml; the tables retrain what is missing); python -m robust_ensembles.store verify "
            f"paths.store_dir={entry.parent} lists every damaged entry.")


def open_run(root: str | Path, identity: dict) -> Run:
    require_current(root)
    return Run(Path(root).expanduser() / key_of(identity), identity)


def _wanted(key: str, value: Any) -> Any:
    if key == "_target_" or key.endswith("._target_"):
        return registry.name_of(value) if isinstance(value, str) else value
    return canonical(registry.meaning(value))


def query(root: str | Path, where: Mapping[str, Any], seeds: Iterable[int] | None = None) -> list[Run]:
    """Complete entries whose identity matches every dotted key of `where` (and one of `seeds`), by seed.
    Targets in `where` may be import paths or stable names."""
    require_current(root)
    root = Path(root).expanduser()
    wanted = {k: _wanted(k, v) for k, v in where.items()}
    seeds = None if seeds is None else {float(s) for s in seeds}
    runs = []
    for marker in sorted(root.glob(f"*/{MARKER}")):
        run = Run.at(marker.parent)
        if all(_select(run.identity, k)[0] and canonical(_select(run.identity, k)[1]) == v for k, v in wanted.items()):
            if seeds is None or float(run.identity.get("seed", -1)) in seeds:
                runs.append(run)
    return sorted(runs, key=lambda r: r.identity.get("seed", 0))


def entries(root: str | Path) -> list[Path]:
    """Every entry folder of the store (complete or not)."""
    root = Path(root).expanduser()
    return sorted(p.parent for p in root.glob("*/identity.json"))


# ----------------------------------------------------------------------------- records
RECORDS = "records"
DIGEST = "sha256"   # a record's digest of its own content (every other field)


def record_path(root: str | Path, kind: str, spec: Mapping, key: str | None = None) -> Path:
    """Where the record of `kind` for `spec` lives (`key`: key_of(spec), when the caller has it)."""
    return Path(root).expanduser() / RECORDS / kind / f"{key or key_of(spec)}.json"


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """(record, None), or (None, what is wrong with it): unreadable, or content not matching its digest."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e})"
    if not isinstance(record, dict):
        return None, "not a record"
    body = {k: v for k, v in record.items() if k != DIGEST}
    if record.get(DIGEST) != sha256_json(body):
        return None, "its content does not match its digest" if DIGEST in record else "it carries no digest"
    return record, None


def get_record(root: str | Path, kind: str, spec: Mapping, version: int) -> dict | None:
    """The stored record of `kind` for `spec`, or None when there is none, it is damaged, or it is stale
    (computed by code of another semantics version): reported, and left to be recomputed."""
    require_current(root)
    path = record_path(root, kind, spec)
    if not path.is_file():
        return None
    record, wrong = read_record(path)
    if record is None:
        log.warning("[store] damaged %s record %s (%s): recomputing", kind, path, wrong)
        return None
    if record.get("version") != version:
        log.warning("[store] stale %s record %s (semantics version %s, this code writes %s): recomputing",
                    kind, path, record.get("version"), version)
        return None
    return record


def records(root: str | Path, kind: str, version: int) -> list[dict]:
    """Every sound record of `kind` at this semantics version (e.g. to estimate costs from)."""
    require_current(root)
    out = []
    for path in sorted(record_path(root, kind, {}, key="any").parent.glob("*.json")):
        record, wrong = read_record(path)
        if record is None:
            log.warning("[store] damaged %s record %s (%s): left out", kind, path, wrong)
        elif record.get("version") == version:
            out.append(record)
    return out


def put_record(root: str | Path, kind: str, spec: Mapping, version: int, payload: Mapping) -> dict:
    """Write a record atomically, with its digest; returns it as stored (payload plus kind, version,
    key, spec with targets by stable name, digest)."""
    mark_current(root)
    key = key_of(spec)
    record = json.loads(json.dumps({**payload, "kind": kind, "version": version, "key": key, "spec": canonical_json(spec)}))
    record[DIGEST] = sha256_json(record)
    atomic_files.write_atomic(record_path(root, kind, spec, key), json.dumps(record, indent=2, sort_keys=True))
    return record


def canonical_json(value: Any) -> Any:
    """`value` as plain JSON types with targets by stable name (what a record's spec is stored as)."""
    return registry.meaning(json.loads(json.dumps(value)))
