"""torch.compile for the model's forward passes (`module.compile`), falling back to eager where the
compiler fails.

`module.compile`: false (eager), true (torch.compile's "default" mode) or a torch.compile mode:
"reduce-overhead" adds CUDA graphs (the attack's many small steps are launch-bound on a GPU; on a CPU
torch skips them), "max-autotune" (with CUDA graphs) and "max-autotune-no-cudagraphs" tune kernels.
`make bench-gpu` measures each mode against eager.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from robust_ensembles.core.errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(compile: bool | str | None) -> str | None:
    """`module.compile` as torch.compile's mode: false/null = eager (None), true = "default"."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if compile in COMPILE_MODES:
        return str(compile)
    raise ConfigError(f"module.compile={compile!r} must be false, true or a torch.compile mode: {', '.join(COMPILE_MODES)}.")


def is_compiler_error(e: BaseException) -> bool:
    """An error of torch's compiler stack (dynamo tracing, inductor code generation, a C++ or Triton
    build: torch._dynamo, torch._inductor, triton), not of the model: those are the failures eager execution does not share."""
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor", "triton")) and not isinstance(e, torch.OutOfMemoryError)


class EagerFallback(nn.Module):
    """`torch.compile(model, mode=mode)` that runs the model eagerly, with one warning, from the first call
    whose compilation fails. torch compiles lazily, so a missing compiler or an unsupported backend shows
    at a call, not at torch.compile; eager gives the same numbers, so such a failure costs speed only.
    Errors that are not the compiler's (out of memory, a bad input) are raised as they are, and so is a
    compiler failure in the backward pass, which happens outside this call."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        self.model, self.mode, self.calls = model, mode, 0
        object.__setattr__(self, "compiled", torch.compile(model, mode=mode))  # not a second submodule

    @property
    def fell_back(self) -> bool:
        return self.compiled is None

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - filtered: only the compiler's own failures fall back
                if not is_compiler_error(e):
                    raise
                first = str(e).splitlines()[0] if str(e) else ""
                log.warning("torch.compile(mode=%r) failed at call %d (%s: %s); running eagerly from now on",
                            self.mode, self.calls, type(e).__name__, first)
                object.__setattr__(self, "compiled", None)
        return self.model(*args, **kwargs)


def compiled(model: nn.Module, compile: bool | str | None = True) -> nn.Module:
    """The model for forward passes under `module.compile`: the model itself when eager, else an
    EagerFallback around torch.compile (the model itself, with a warning, if torch.compile refuses)."""
    mode = compile_mode(compile)
    if mode is None:
        return model
    try:
        return EagerFallback(model, mode)
    except Exception as e:  # noqa: BLE001 - backend missing, unsupported platform: eager is always correct
        log.warning("torch.compile failed (%s: %s); running eagerly", type(e).__name__, e)
        return model


def mark_step(forward: nn.Module) -> None:
    """Tell CUDA graphs that a new training iteration begins (earlier graph outputs may be overwritten);
    a no-op unless `forward` is compiled in a CUDA-graph mode and its model is on a GPU."""
    if isinstance(forward, EagerFallback) and forward.mode in CUDA_GRAPH_MODES and not forward.fell_back:
        if next(forward.model.parameters()).is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
