"""Look after the store: python -m robust_ensembles.store {ls,verify,gc,migrate} [--apply] [overrides...]

  ls        models by recipe, alpha and seed (kept epoch, clean and robust test accuracy, size, date),
            records by kind and semantics version, incomplete entries and who holds them
  verify    every file of every complete entry against the sha256 recorded when it was completed, every
            record against its own digest (like git fsck); status 1 when anything is damaged
  gc        stale, damaged and orphaned records, incomplete entries no job holds (--resumable: those
            a sweep could resume too) and temporary files of dead writers; a dry run unless --apply
  migrate   rename a store written under an older identity scheme (keys naming module paths) to this
            one, records included; retrains nothing; a dry run unless --apply

The store is the one the training config names: `paths.store_dir` (env RE_STORE, default <checkout>/store);
trailing Hydra overrides choose another, e.g. `paths.store_dir=/data/store` or `experiment=cpu`.
Bad input is one line `error: ...` and status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robust_ensembles.core.cli import EXIT_USER_ERROR
from robust_ensembles.core.errors import ConfigError, UserError

COMMANDS = ("ls", "verify", "gc", "migrate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, like every entry point
        print(f"error: {message} (python -m robust_ensembles.store --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m robust_ensembles.store", description=__doc__.split("\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, metavar="{" + ",".join(COMMANDS) + "}")
    p.add_argument("--apply", action="store_true", help="gc, migrate: do it (default: say what would be done)")
    p.add_argument("--resumable", action="store_true",
                   help="gc: also incomplete entries that could resume (a last.ckpt, no job holding them)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config (paths.store_dir=..., experiment=...)")
    return p


def store_root(overrides: list[str]) -> Path:
    from robust_ensembles.core.compose import compose_config

    cfg = compose_config("train", overrides)
    root = Path(cfg.store.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"paths.store_dir={root} is not a folder; name the store with paths.store_dir=... or RE_STORE.")
    return root


def run(args: argparse.Namespace) -> int:
    from robust_ensembles.store import admin
    from robust_ensembles.store.record_kinds import VERSIONS

    root = store_root(args.overrides)
    if args.command == "ls":
        print(admin.format_inventory(admin.inventory(root), VERSIONS))
        return 0
    if args.command == "verify":
        v = admin.verify(root)
        for problem in v.problems:
            print(problem)
        print(f"{root}: {v.entries} complete entries ({v.files} files, {v.bytes / 1e6:.1f} MB) and {v.records} records "
              f"checked, {v.incomplete} incomplete entries not judged: "
              + ("all sound" if v.sound else f"{len(v.problems)} problem{'' if len(v.problems) == 1 else 's'} (restore those files from a copy, or delete "
                                             f"the entries and rerun their commands; damaged records are recomputed)"))
        return 0 if v.sound else 1
    if args.command == "gc":
        items = admin.garbage(root, VERSIONS, resumable=args.resumable)
        for path, why in items:
            print(f"{'removing' if args.apply else 'would remove'} {path.relative_to(root)}: {why}")
        if args.apply:
            print(f"{root}: removed {len(items)} items, {admin.collect(items) / 1e6:.1f} MB")
        else:
            print(f"{root}: {len(items)} items to remove" + (" (dry run: add --apply)" if items else ""))
        return 0
    m = admin.migrate(root, args.apply)
    print(admin.format_migration(m, root, args.apply))
    return 0


def main(argv: list[str] | None = None) -> int:
    import os

    args = parser().parse_intermixed_args(argv)
    try:
        return run(args)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
