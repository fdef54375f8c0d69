"""robust-ensembles: ensembles of adversarially trained models, as Hydra-configured sweeps."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def _cuda_or(on_gpu, on_cpu):
    import torch

    return on_gpu if torch.cuda.is_available() else on_cpu


def _if_natural(alpha, natural, adversarial):
    return natural if float(alpha) == 0 else adversarial


def _gpu_share(jobs_per_gpu) -> float:
    if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu={jobs_per_gpu!r} must be an integer >= 1 (jobs sharing one GPU)")
    return 1.0 / jobs_per_gpu


# `${project_root:}` lets configs name paths relative to the checkout, whatever the cwd;
# `${cuda_or:a,b}` is a when a CUDA device is visible, else b (the GPU fast path's defaults);
# `${gpu_share:n}` is the fraction of a GPU each of n jobs sharing it asks the launcher for;
# `${if_natural:${alpha},a,b}` is a for a natural model (alpha = 0), else b (a preset's per-kind schedule).
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("cuda_or"):
    OmegaConf.register_new_resolver("cuda_or", _cuda_or)
if not OmegaConf.has_resolver("gpu_share"):
    OmegaConf.register_new_resolver("gpu_share", _gpu_share)
if not OmegaConf.has_resolver("if_natural"):
    OmegaConf.register_new_resolver("if_natural", _if_natural)

__all__ = ["PROJECT_ROOT", "CONFIG_DIR"]
