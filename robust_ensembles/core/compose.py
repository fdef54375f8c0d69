"""One config composer for every command that composes configs of its own (the table driver, the
bench, the alpha recommender): conf/<name>.yaml with overrides, inside a running Hydra app or outside one,
each composition made once per process."""

from __future__ import annotations

import copy

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from robust_ensembles import CONFIG_DIR
from robust_ensembles.core.errors import ConfigError

_COMPOSED: dict[tuple, DictConfig] = {}


def compose_config(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """conf/<config_name>.yaml with overrides (inside a running Hydra app, or outside one); a table
    composes the same configs many times, so each is composed once per process and handed out as a copy.
    `hydra`: with Hydra's own config (`cfg.hydra`: the launcher) and the `hydra...` overrides, else without.
    Overrides that only set a value (`alpha=0.5`, `evaluation.eps_grid=[0]`: no config group, no +/~) are
    applied to the composition of the others, as Hydra applies them after the defaults: a table's hundreds
    of rows differ in values only, and one composition takes about half a second."""
    overrides = [o for o in overrides if hydra or not o.startswith("hydra")]
    groups, values = (overrides, []) if hydra else split_overrides(overrides)
    key = (config_name, tuple(groups), hydra)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(config_name, groups, hydra)
    cfg = copy.deepcopy(_COMPOSED[key])
    try:
        for name, value in values:
            OmegaConf.update(cfg, name, value, merge=True)  # as Hydra applies a value override
    except Exception:  # a key the config lacks, a wrong type: Hydra's own composition says what is wrong
        return _compose(config_name, overrides, hydra)  # (a fresh composition: nothing to copy)
    return cfg


def _compose(config_name: str, overrides: list[str], hydra: bool) -> DictConfig:
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
    except HydraException as e:
        raise ConfigError(f"conf/{config_name}.yaml with {overrides}: {' '.join(str(e).split())}") from None


def split_overrides(overrides: list[str]) -> tuple[list[str], list[tuple[str, object]]]:
    """(the overrides composition needs: config groups, +/~, anything unparsed; the value overrides as (key,
    value)), a value override being `key=value` whose key names no config group (conf/<key>/)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return list(overrides), []
    groups, values = [], []
    for text, o in zip(overrides, parsed):
        name = o.key_or_group
        is_group = "/" in name or "@" in name or (CONFIG_DIR / name).is_dir()
        if o.type != OverrideType.CHANGE or o.is_sweep_override() or o.package is not None or is_group:
            groups.append(text)
        else:
            values.append((name, o.value()))
    # Hydra applies +, ++ and ~ overrides in the order given, among the value overrides: where one touches a
    # key a value override also sets (or one inside the other), only Hydra's own order gives the right config
    touched = [o.key_or_group for o in parsed if o.type != OverrideType.CHANGE]
    related = lambda a, b: a == b or a.startswith(b + ".") or b.startswith(a + ".")
    if any(related(t, name) for t in touched for name, _ in values):
        return list(overrides), []
    return groups, values
