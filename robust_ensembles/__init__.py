"""robust-ensembles: ensembles of adversarially trained models, as Hydra-configured sweeps."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

# `${project_root:}` lets configs name paths relative to the checkout, whatever the cwd.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))

__all__ = ["PROJECT_ROOT", "CONFIG_DIR"]
