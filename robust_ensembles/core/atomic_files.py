"""Files written atomically: to a temporary file, then renamed, so that a killed job leaves the old
complete file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


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
