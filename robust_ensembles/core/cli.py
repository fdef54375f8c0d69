"""How every entry point runs: Hydra's `main`, with user errors as one line instead of a traceback.

A `UserError` (a bad config value, a missing dataset, a missing or corrupt checkpoint) prints
`error: <message>` on stderr and exits with status 2; `HYDRA_FULL_ERROR=1` re-raises it with its
traceback. In a multirun a failing job prints the same line, leaves a `FAILED` file in its output
folder and returns, so the other jobs still run; `FailedJobs` (a Hydra callback, conf/hydra/default.yaml)
then ends the multirun with a one-line summary of the failed jobs and status 1.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from robust_ensembles import CONFIG_DIR
from robust_ensembles.core.errors import ConfigError, UserError

EXIT_USER_ERROR = 2
FAILED = "FAILED"
LAUNCHER = ("hydra/launcher", "hydra.launcher")  # the overrides that choose and configure a Hydra launcher


def override_key(override: str) -> str:
    """The config key a command-line override sets (`+a.b=1`, `~a.b` and `a.b=1` all set `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def launcher_overrides(hydra_overrides: list[str]) -> list[str]:
    """Of a run's Hydra overrides, those that reach a launcher (passed on to the multiruns a command starts)."""
    return [o for o in hydra_overrides if override_key(o).startswith(LAUNCHER)]


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error_in(e: BaseException) -> UserError | None:
    """The UserError behind `e`: itself, or the cause Hydra's `instantiate` wrapped (a bad value that a
    constructor refused, e.g. `evaluation.attack.steps=0`, arrives as an InstantiationException)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def reporting_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """`task`, with a UserError reported as one line (see the module docstring)."""

    @functools.wraps(task)
    def run(cfg: DictConfig):
        try:
            return task(cfg)
        except Exception as raised:
            e = user_error_in(raised)
            if e is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            if _in_multirun():
                hc = HydraConfig.get()
                out = Path(hc.runtime.output_dir)
                out.mkdir(parents=True, exist_ok=True)
                overrides = " ".join(hc.overrides.task)
                (out / FAILED).write_text(f"{overrides}\n{type(e).__name__}: {e}\n")
                return None
            sys.exit(EXIT_USER_ERROR)

    return run


def main(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """`hydra.main` on conf/<config_name>.yaml, reporting user errors as one line."""

    def wrap(task):
        return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            reporting_user_errors(task))

    return wrap


class RayAuthMode(Callback):
    """Before a multirun launches: Ray's authentication mode (`RAY_AUTH_MODE`) stated, unless the user set it.
    A new local Ray cluster picks token authentication by default and warns that it did on every launch;
    stated explicitly, the same mode starts without the warning. Launchers other than Ray never read it."""

    def __init__(self, mode: str):
        if mode not in ("token", "disabled"):
            raise ConfigError(f"hydra.callbacks.ray_auth.mode={mode!r} must be token or disabled.")
        self.mode = mode

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", self.mode)


class FailedJobs(Callback):
    """At the end of a multirun: one line naming the jobs that failed (their `FAILED` files), then exit 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"**/{FAILED}"))
        if not failed:
            return
        jobs = "; ".join(p.read_text().splitlines()[0] or p.parent.name for p in failed)
        print(f"error: {len(failed)} job(s) of this multirun failed (each reported above; the others finished): "
              f"{jobs}", file=sys.stderr, flush=True)
        sys.exit(1)
