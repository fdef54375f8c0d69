"""robust-ensembles: ensembles of adversarially trained models, as Hydra-configured sweeps."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"



def _cuda_or(on_gpu, on_cpu):
    import torch

    return on_gpu if torch.cuda.is_available() else on_cpu


# `${project_root:}` lets configs name paths relative to the checkout, whatever the cwd;
# `${cuda_or:a,b}` is a when a CUDA device is visible, else b (the GPU fast path's defaults).
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("cuda_or"):
    OmegaConf.register_new_resolver("cuda_or", _cuda_or)

__all__ = ["PROJECT_ROOT", "CONFIG_DIR"]
