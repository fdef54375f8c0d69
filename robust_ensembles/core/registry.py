"""Stable names for the classes and functions that configs build (`_target_`), so that a store key
depends on what a target is, never on where its code lives.

A target of this package carries a name: `@stable_name("pgd")` on `robust_ensembles.attacks.pgd.PGD`.
Identities and record specs hold that name in place of the import path (`meaning`), so moving or
renaming a module changes no key; configs keep import paths, which Hydra's `instantiate` needs, and
a stored config is built with the current path of its names (`current`). Targets of other packages
(`torch.optim.SGD`) are their public API and keep their path.

Moving a target: move it with its decorator and change its configs' `_target_`; nothing else. A
name is never reused for something that trains differently: change the name, and its models are
new entries. `formerly=` lists import paths a target had before names existed (identity scheme 1),
so that `python -m robust_ensembles.store migrate` can rename stores written then.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Any, Callable, Mapping, TypeVar

PACKAGE = __name__.split(".")[0]
ATTRIBUTE = "__stable_name__"
_BY_NAME: dict[str, Any] = {}   # stable name -> the object
_FORMER: dict[str, str] = {}    # import path of scheme 1 -> stable name

T = TypeVar("T")


class UnnamedTargetError(TypeError):
    """A target of this package without a stable name: a bug in the package, not bad input."""


def stable_name(name: str, *, formerly: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Decorator: `name` keys every store entry and record built with this class or function."""
    if not name or "." in name:
        raise ValueError(f"stable name {name!r} must be non-empty and dot-free (a dot means an import path)")

    def mark(obj: T) -> T:
        held = _BY_NAME.get(name)
        if held is not None and _path(held) != _path(obj):
            raise ValueError(f"stable name {name!r} is taken by {_path(held)}; {_path(obj)} needs another")
        setattr(obj, ATTRIBUTE, name)
        _BY_NAME[name] = obj
        for path in formerly:
            _FORMER[path] = name
        return obj

    return mark


def _path(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _own_name(obj: Any) -> str | None:
    """The name declared on obj itself (a subclass does not inherit its parent's)."""
    return vars(obj).get(ATTRIBUTE) if hasattr(obj, "__dict__") else None


def _locate(path: str) -> Any | None:
    from hydra._internal.utils import _locate as hydra_locate

    try:
        return hydra_locate(path)
    except (ImportError, AttributeError, ValueError):
        return None


def name_of(target: str) -> str:
    """The stable name of a `_target_`: a name stays itself, a path of this package becomes its
    target's name, a path of another package stays as it is."""
    if "." not in target or not target.startswith(PACKAGE + "."):
        return target
    obj = _locate(target)
    name = _own_name(obj) if obj is not None else None
    if name is None:
        if obj is None and target in _FORMER:
            return _FORMER[target]
        raise UnnamedTargetError(
            f"_target_ {target} {'cannot be imported' if obj is None else 'has no stable name'}: decorate it "
            f"with @robust_ensembles.core.registry.stable_name(...) so that store keys do not depend on its module path")
    return name


def former_name(target: str) -> str:
    """`name_of` for an import path written under identity scheme 1, when the code may have moved since:
    its current name if it still imports, else one listed in a `formerly=`, else the one target of this
    package with the same last component (the rule that finds a class moved to another module)."""
    if "." not in target or not target.startswith(PACKAGE + "."):
        return target
    load_all()
    try:
        return name_of(target)
    except UnnamedTargetError:
        leaf = target.rsplit(".", 1)[1]
        same = sorted(n for n, obj in _BY_NAME.items() if obj.__qualname__ == leaf)
        if len(same) == 1:
            return same[0]
        raise


def current(target: str) -> str:
    """The import path that builds `target` now (a stable name, or a path that may have moved)."""
    if "." in target and _locate(target) is not None:
        return target
    load_all()
    name = target if "." not in target else former_name(target)
    if name not in _BY_NAME:
        raise UnnamedTargetError(f"no target is named {name!r} in this version of {PACKAGE}")
    return _path(_BY_NAME[name])


def _mapped(value: Any, rename: Callable[[str], str]) -> Any:
    if isinstance(value, Mapping):
        return {k: (rename(v) if k == "_target_" and isinstance(v, str) else _mapped(v, rename)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mapped(v, rename) for v in value]
    return value


def meaning(value: Any) -> Any:
    """`value` (plain containers) with every `_target_` replaced by its stable name."""
    return _mapped(value, name_of)


def meaning_of_former(value: Any) -> Any:
    """`meaning` of a value written under identity scheme 1 (see `former_name`)."""
    return _mapped(value, former_name)


def buildable(value: Any) -> Any:
    """`value` with every `_target_` (a name or an old path) replaced by its current import path."""
    return _mapped(value, current)


def load_all() -> None:
    """Import every module of the package, so every stable name is registered."""
    package = importlib.import_module(PACKAGE)
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        if info.name.rsplit(".", 1)[-1].startswith("__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency missing: its targets stay unnamed here
            warnings.warn(f"{info.name} could not be imported ({e}); stable names it declares are unknown", stacklevel=2)
