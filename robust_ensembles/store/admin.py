"""Looking after a store: what it holds (`inventory`), whether every byte is what was written
(`verify`), what can go (`garbage`), and moving a store of an older identity scheme to this one
(`migrate`). `python -m robust_ensembles.store` is the command over these.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from robust_ensembles.core import atomic_files, registry
from robust_ensembles.core.errors import StoreBusyError, StoreIntegrityError, StoreSchemeError
from robust_ensembles.store import (IDENTITY_SCHEME, MARKER, RECORDS, STORE_FILE, Run, describe_identity, entries,
                                    key_of, read_record, record_path, scheme_of, sha256_json)
from robust_ensembles.store.locks import LOCK, EntryLock, describe, holder_of

MIGRATIONS = "MIGRATIONS.json"   # <store>/MIGRATIONS.json: every key a migration renamed, old -> new
SUPERSEDED = "superseded"        # <store>/superseded/<old key>: a scheme-1 copy of a model the store holds again
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _date(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _target_name(value: Any) -> str:
    """A target's stable name (an old store's import path too, where it can be told)."""
    target = value.get("_target_", "?") if isinstance(value, Mapping) else "?"
    try:
        return registry.former_name(target)
    except registry.UnnamedTargetError:
        return target


# ----------------------------------------------------------------------------- ls
def inventory(root: Path) -> dict:
    """Models (single and composite) with recipe, alpha, seed, kept epoch, accuracies, size and date;
    incomplete entries with their lock holder; records by kind and semantics version."""
    models, incomplete, unreadable = [], [], []
    for path in entries(root):
        ident = _identity(path)
        if ident is None:
            unreadable.append(path.name)
            continue
        row = {"key": path.name, "alpha": ident.get("alpha"), "seed": ident.get("seed"),
               "composite": ident.get("composite") and {"robust": ident["composite"]["robust"]["alpha"],
                                                        "natural": ident["composite"]["natural"]["alpha"],
                                                        "eps": ident["composite"]["eps"]},
               "model": _target_name(ident.get("model")), "scheme": ident.get("scheme", 1),
               "bytes": _size(path)}
        try:
            row["recipe"] = next((line.split(":", 1)[1].strip() for line in (path / "config.yaml").read_text().splitlines()
                                  if line.startswith("name:")), "?")
        except OSError:
            row["recipe"] = "?"
        if (path / MARKER).is_file():
            try:
                m = json.loads((path / "metrics.json").read_text())
            except (OSError, json.JSONDecodeError):
                m = {}
            row.update(epoch=m.get("best_epoch"), clean=m.get("test/nat_acc"),
                       robust={k.split("@", 1)[1]: v for k, v in sorted(m.items()) if k.startswith("test/adv_acc@")},
                       fit_s=m.get("fit_seconds"), date=_date(path / MARKER))
            models.append(row)
        else:
            row.update(date=_date(path / "identity.json"), holder=holder_of(path),
                       resumable=(path / "checkpoints" / "last.ckpt").is_file())
            incomplete.append(row)
    kinds: dict[str, dict] = {}
    for path in sorted((root / RECORDS).glob("*/*.json")):
        record, wrong = read_record(path)
        k = kinds.setdefault(path.parent.name, {"versions": {}, "damaged": 0, "bytes": 0})
        k["bytes"] += path.stat().st_size + (path.with_suffix(".png").stat().st_size if path.with_suffix(".png").is_file() else 0)
        if record is None:
            k["damaged"] += 1
        else:
            v = str(record.get("version"))
            k["versions"][v] = k["versions"].get(v, 0) + 1
    order = lambda r: (r["recipe"], r["model"], r["composite"] is not None, float(r["alpha"] or 0), r["seed"] or 0)
    return {"root": str(root), "scheme": scheme_of(root), "models": sorted(models, key=order),
            "incomplete": sorted(incomplete, key=order), "records": kinds, "unreadable": unreadable}


def _identity(path: Path) -> dict | None:
    try:
        ident = json.loads((path / "identity.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return ident if isinstance(ident, dict) else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_inventory(inv: dict, versions: Mapping[str, int]) -> str:
    lines = [f"store {inv['root']} (identity scheme {inv['scheme']})", ""]
    if inv["scheme"] not in (None, IDENTITY_SCHEME):
        lines[-1:] = [f"written under identity scheme {inv['scheme']}: its records carry no digests yet and this code "
                      f"finds none of its entries; python -m robust_ensembles.store migrate --apply moves it", ""]
    models = inv["models"]
    lines.append(f"models: {len(models)} complete, {sum(_size_of(r) for r in models) / 1e6:.1f} MB")
    if models:
        head = f"  {'recipe':<8} {'model':<11} {'alpha':>6} {'seed':>4} {'epoch':>5} {'clean %':>7}  {'robust % (test eps)':<24} {'size':>8}  {'completed':<16}  key"
        lines.append(head)
        for r in models:
            what = (f"({r['composite']['robust']}, {r['composite']['natural']})@{r['composite']['eps']}"
                    if r["composite"] else f"{r['alpha']:g}" if isinstance(r["alpha"], (int, float)) else "?")
            robust = ", ".join(f"{e}: {_pct(a)}" for e, a in r["robust"].items()) or "-"
            lines.append(f"  {r['recipe']:<8} {('composite' if r['composite'] else r['model']):<11} {what:>6} "
                         f"{r['seed']!s:>4} {r['epoch']!s:>5} {_pct(r['clean']):>7}  {robust:<24} {_mb(r['bytes']):>8}  "
                         f"{r['date']:<16}  {r['key']}")
    lines.append("")
    lines.append(f"records: {sum(sum(k['versions'].values()) + k['damaged'] for k in inv['records'].values())}")
    for kind, k in sorted(inv["records"].items()):
        current = versions.get(kind)
        parts = [f"{n} at version {v}{' (current)' if str(current) == v else ' (stale: gc removes them)'}"
                 for v, n in sorted(k["versions"].items())]
        if k["damaged"]:
            parts.append(f"{k['damaged']} damaged (recomputed when needed; gc removes them)")
        lines.append(f"  {kind:<11} {'; '.join(parts) or '-'}  ({_mb(k['bytes'])})")
    lines.append("")
    lines.append(f"incomplete entries: {len(inv['incomplete'])}")
    for r in inv["incomplete"]:
        holder = "no job holds it" if r["holder"] is None else f"held by {describe(r['holder'])}, training now"
        lines.append(f"  {r['key']}  {r['recipe']} alpha={r['alpha']} seed={r['seed']}  since {r['date']}  {holder}"
                     f"{'  (resumable: has last.ckpt)' if r['resumable'] else ''}")
    for key in inv["unreadable"]:
        lines.append(f"  {key}  identity.json unreadable (verify reports it)")
    return "\n".join(lines)


def _size_of(row: dict) -> int:
    return row["bytes"]


# ----------------------------------------------------------------------------- verify
@dataclass
class Verification:
    entries: int = 0
    incomplete: int = 0
    records: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.problems


def verify(root: Path, progress: Callable[[str], None] = lambda line: None) -> Verification:
    """Every complete entry's files against its manifest and its identity against its key; every record
    against its digest. Incomplete entries are counted, not judged (a sweep resumes them)."""
    out = Verification()
    if (scheme := scheme_of(root)) not in (None, IDENTITY_SCHEME):
        out.problems.append(f"the store is of identity scheme {scheme}, this code reads {IDENTITY_SCHEME}: "
                            f"python -m robust_ensembles.store migrate --apply")
        return out
    for path in entries(root):
        if not (path / MARKER).is_file():
            out.incomplete += 1
            continue
        out.entries += 1
        try:
            run = Run.at(path)
            files = run.manifest()["files"]
            bad = run.problems()
        except StoreIntegrityError as e:
            out.problems.append(f"damaged entry {path.name}: {e}")
            continue
        out.files += len(files)
        out.bytes += sum(f["bytes"] for f in files.values())
        for b in bad:
            out.problems.append(f"damaged entry {path.name} ({describe_identity(run.identity)}): {b}")
        progress(f"{path.name}: {'damaged' if bad else 'ok'}")
    for path in sorted((root / RECORDS).glob("*/*.json")):
        out.records += 1
        record, wrong = read_record(path)
        if record is None:
            out.problems.append(f"damaged record {RECORDS}/{path.parent.name}/{path.name}: {wrong}")
        elif record.get("key") != path.stem:
            out.problems.append(f"damaged record {RECORDS}/{path.parent.name}/{path.name}: its content names key "
                                f"{record.get('key')}")
    return out


# ----------------------------------------------------------------------------- gc
STALE_TMP_S = 3600   # a temporary file untouched this long belongs to a writer that died (writes take seconds)


def garbage(root: Path, versions: Mapping[str, int], resumable: bool = False) -> list[tuple[Path, str]]:
    """What gc removes, with why: records of another semantics version, damaged records, records whose
    members are no longer in the store; incomplete entries no job holds (`resumable`: those with a
    last.ckpt too, which a sweep would otherwise resume); temporary files of writers that died."""
    if (scheme := scheme_of(root)) not in (None, IDENTITY_SCHEME):
        raise StoreSchemeError(f"{root} is of identity scheme {scheme}: migrate it first (python -m "
                               f"robust_ensembles.store migrate --apply paths.store_dir={root}); gc would take its "
                               f"records, which carry no digests yet, for damaged ones.")
    out: list[tuple[Path, str]] = []
    complete = {p.name for p in entries(root) if (p / MARKER).is_file()}
    for path in sorted((root / RECORDS).glob("*/*.json")):
        record, wrong = read_record(path)
        kind = path.parent.name
        if record is None:
            out.append((path, f"damaged {kind} record ({wrong})"))
        elif kind in versions and record.get("version") != versions[kind]:
            out.append((path, f"stale {kind} record (version {record.get('version')}, this code writes {versions[kind]})"))
        elif missing := [k for k in record.get("spec", {}).get("members", []) if isinstance(k, str) and k not in complete]:
            out.append((path, f"{kind} record of members no longer in the store ({', '.join(missing)})"))
    for path in entries(root):
        if (path / MARKER).is_file() or holder_of(path) is not None:
            continue
        if (path / "checkpoints/last.ckpt").is_file():
            if resumable:
                out.append((path, "incomplete entry, no job holds it (its last.ckpt is lost: a sweep would have resumed it)"))
        else:
            out.append((path, "incomplete entry, no job holds it, nothing to resume from"))
    now = time.time()
    for path in sorted(root.rglob(".*.tmp*")):
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # renamed by its writer meanwhile
            continue
        if _TMP.match(path.name) and age > STALE_TMP_S:
            out.append((path, f"temporary file untouched for {age / 3600:.1f} h (its writer died)"))
    return out


def collect(items: list[tuple[Path, str]]) -> int:
    """Remove what `garbage` listed; returns the bytes freed."""
    freed = 0
    for path, _ in items:
        if path.is_dir():  # an incomplete entry: removed while holding its lock, so no job starts on it meanwhile
            try:
                with EntryLock(path, timeout_s=0):
                    if (path / MARKER).is_file():
                        continue  # completed meanwhile
                    for part in path.iterdir():
                        if part.name != LOCK:
                            freed += _size(part) if part.is_dir() else part.stat().st_size
                            shutil.rmtree(part) if part.is_dir() else part.unlink()
            except StoreBusyError:
                continue  # a job took it meanwhile
        elif path.exists():
            freed += path.stat().st_size
            png = path.with_suffix(".png")
            if path.suffix == ".json" and png.is_file():
                freed += png.stat().st_size
                png.unlink()
            path.unlink()
    return freed


# ----------------------------------------------------------------------------- migrate
@dataclass
class Migration:
    models: dict[str, str] = field(default_factory=dict)     # old key -> new key
    composites: dict[str, str] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)    # records/<kind>/<old>.json -> <new>
    sealed: int = 0                                          # complete entries given a manifest
    skipped: list[str] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return len(self.models) + len(self.composites) + len(self.records)


def _renamed(value: Any, keys: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return keys.get(value, value)
    if isinstance(value, Mapping):
        return {k: _renamed(v, keys) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, keys) for v in value]
    return value


def _reseal(run: Run) -> None:
    """A manifest for an entry completed before digests: its files as found, its completion date kept."""
    marker = run.path / MARKER
    when = marker.stat().st_mtime
    run.seal(digests="taken at migration",
             completed=datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="seconds"))
    os.utime(marker, (when, when))


def migrate(root: Path, apply: bool) -> Migration:
    """Rename a store of identity scheme 1 (targets by module path) to this scheme: every entry's key,
    composites' backbone keys, every record's key and members; complete entries get a manifest of their
    files as found. Retrains and recomputes nothing; `apply=False` says what it would do.

    Only what scheme 1 wrote is touched: identities without a "scheme", records without a digest (a
    damaged scheme-2 entry or record is left for `verify` to report, never re-digested). The whole
    renaming (old key -> new key) is planned and written to MIGRATIONS.json before anything moves, so a
    killed migration is finished by running it again."""
    done_file = root / MIGRATIONS
    keys: dict[str, str] = json.loads(done_file.read_text()) if done_file.is_file() else {}
    out = Migration()
    busy = [f"{p.name} ({describe(h)})" for p in entries(root) if (h := holder_of(p)) is not None]
    if busy and apply:
        raise StoreBusyError(f"jobs hold entries of {root} right now: {', '.join(busy)}; migrate when they end.")
    # 1. plan: every scheme-1 entry's new identity and key (composites after their backbones)
    plan: list[tuple[Path, dict, str]] = []
    old = {p: ident for p in entries(root) if (ident := _identity(p)) is not None and "scheme" not in ident}
    for composite_pass in (False, True):
        for path, ident in old.items():
            if ("backbones" in ident) != composite_pass:
                continue
            if path.name in keys.values():  # renamed by an earlier run that died before its identity was rewritten
                new_ident = _scheme2_identity(ident, keys)
                plan.append((path, new_ident, path.name))
                continue
            new_ident = _scheme2_identity(ident, keys)
            new = key_of(new_ident)
            keys[path.name] = new
            plan.append((path, new_ident, new))
    if apply and plan:
        atomic_files.write_atomic(done_file, json.dumps(keys, indent=2, sort_keys=True))
    # 2. move the entries
    for path, new_ident, new in plan:
        bucket = out.composites if "backbones" in new_ident else out.models
        target = root / new
        if target.exists() and target != path:
            if (target / MARKER).is_file():  # the same model, trained again under the new scheme: keep that one
                aside = root / SUPERSEDED / path.name
                out.skipped.append(f"{path.name}: {new} exists already (the same model, trained under the new scheme); "
                                   f"records and composites now name {new}; the old copy is moved to {aside}")
                if apply:
                    aside.parent.mkdir(exist_ok=True)
                    os.rename(path, aside)
                continue
            out.skipped.append(f"{path.name}: an incomplete {new} is in the way; delete one of the two and run again")
            continue
        if path != target:
            bucket[path.name] = new
        if not apply:
            continue
        if path != target:
            os.rename(path, target)
        atomic_files.write_atomic(target / "identity.json", json.dumps(new_ident, indent=2, sort_keys=True))
        if (target / MARKER).is_file():
            _reseal(Run(target, new_ident))
            out.sealed += 1
    # 3. the records: those without a digest (what scheme 1 wrote), renamed keys and targets by stable name
    for path in sorted((root / RECORDS).glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            out.skipped.append(f"{RECORDS}/{path.parent.name}/{path.name}: unreadable (gc removes it)")
            continue
        if "sha256" in record:
            continue  # written under this scheme (verify checks it)
        body = _renamed(record, keys)
        body["spec"] = registry.meaning_of_former(body.get("spec", {}))
        new = key_of(body["spec"])
        body["key"] = new
        out.records[f"{path.parent.name}/{path.stem}"] = new
        if not apply:
            continue
        body["sha256"] = sha256_json(body)
        dest = record_path(root, path.parent.name, {}, key=new)
        if dest != path and dest.exists():  # a record of the new scheme (or another old one) holds that key
            out.skipped.append(f"{RECORDS}/{path.parent.name}/{path.name}: {dest.name} exists already; the old record "
                               f"is left as it is (gc removes it)")
            del out.records[f"{path.parent.name}/{path.stem}"]
            continue
        atomic_files.write_atomic(dest, json.dumps(body, indent=2, sort_keys=True))
        png = path.with_suffix(".png")
        if png.is_file() and dest != path:
            os.replace(png, dest.with_suffix(".png"))
        if dest != path:
            path.unlink()
    if apply:  # an entry a migration renamed and rewrote, then was killed before it sealed the entry
        for new in set(keys.values()):
            path, marker = root / new, root / new / MARKER
            try:
                unsealed = marker.is_file() and "files" not in json.loads(marker.read_text())
            except json.JSONDecodeError:
                out.skipped.append(f"{new}: its {MARKER} marker is unreadable (verify reports it)")
                continue
            if unsealed and (ident := _identity(path)) is not None and ident.get("scheme") == IDENTITY_SCHEME:
                _reseal(Run(path, ident))
                out.sealed += 1
        atomic_files.write_atomic(root / STORE_FILE, json.dumps({"identity_scheme": IDENTITY_SCHEME}) + "\n")
    return out


def _scheme2_identity(ident: dict, keys: Mapping[str, str]) -> dict:
    new_ident = {**registry.meaning_of_former(ident), "scheme": IDENTITY_SCHEME}
    if "backbones" in new_ident:
        new_ident["backbones"] = _renamed(new_ident["backbones"], keys)
    return new_ident


def format_migration(m: Migration, root: Path, apply: bool) -> str:
    verb = "moved" if apply else "would move"
    lines = [f"{root}: {verb} {len(m.models)} models, {len(m.composites)} composites and {len(m.records)} records "
             f"to identity scheme {IDENTITY_SCHEME}" + (f"; {m.sealed} complete entries given a manifest of their "
                                                          f"files as found" if apply else "")]
    for old, new in {**m.models, **m.composites}.items():
        lines.append(f"  {old} -> {new}")
    for old, new in m.records.items():
        lines.append(f"  {RECORDS}/{old} -> {new}")
    for s in m.skipped:
        lines.append(f"  skipped {s}")
    if not apply and m.moved:
        lines.append("dry run: add --apply to move them (nothing is retrained or recomputed)")
    return "\n".join(lines)
