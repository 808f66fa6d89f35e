"""The fast path: channels-last memory and torch.compile, on CUDA and on the CPU (inductor's C++ backend).

`engine.channels_last` and `engine.compile` take true, false or `auto` (the default). `auto` switches on
what is faster for the device *and* the run's length, because compile time is paid once per process:

* channels_last: on (no start-up cost; faster convolutions on CUDA and with oneDNN on the CPU), except under
  multi-process CPU training;
* compile: on when the run has at least `COMPILE_MIN_STEPS[device]` optimizer steps, so that the minutes
  inductor needs (measured in docs/results.md) are repaid by the faster steps; off for short runs (the
  quick start, the tests), under multi-process CPU (gloo) training, and where no C++ compiler exists.

Compiled graphs are only used for the call they were built for (`CompiledForward`): the training batch
shape in the mode of the first such call. Every other call (the eval batch, a last partial batch, a pick
pool, a mode switch) runs the eager module, so a run never pays for a second compile of a new shape and
never runs a graph built for another shape. Stage events that change the model or the loss need nothing
special: a switched teacher is compiled anew, loss terms run eagerly outside the compiled forward, and
torch.compile's guards recompile when a model's hooks or structure change.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datakd.errors import ConfigError

AUTO = "auto"
# Optimizer steps from which `compile: auto` compiles. CPU (inductor C++): compiling ResNet-56 → ResNet-20
# KD takes 2–7 minutes on a busy 2-core machine and saves about 0.3 s per 128-image step; CUDA: about a
# minute of compile for a few milliseconds per step. Both are repaid after a few thousand steps.
COMPILE_MIN_STEPS = {"cpu": 5_000, "cuda": 10_000}


@dataclass(frozen=True)
class FastPath:
    """The resolved settings of one run, with why `auto` chose them (written to summary.json)."""

    channels_last: bool
    compile: bool
    reason: str


def _setting(value: Any, key: str) -> bool | None:
    """True/False, or None for `auto`; a clear error for anything else."""
    if value == AUTO:
        return None
    if isinstance(value, bool):
        return value
    raise ConfigError(f"engine.{key} must be true, false or auto, got {value!r}")


def has_cpp_compiler() -> bool:
    """Inductor's CPU backend compiles C++; without a compiler it cannot run."""
    from torch._inductor import config as inductor_config

    return shutil.which(inductor_config.cpp.cxx[0] or "g++") is not None or shutil.which("g++") is not None


def resolve_fast_path(
    channels_last: Any, compile: Any, device: torch.device, total_steps: int, world_size: int = 1
) -> FastPath:
    """Turn the engine settings into concrete choices for this device and run length."""
    cl, comp = _setting(channels_last, "channels_last"), _setting(compile, "compile")
    reasons = []
    if cl is None:
        # CUDA: faster convolutions. CPU (oneDNN): the eager KD step 1.15-1.18x faster (benchmarks/
        # throughput.py --channels-last true --no-compile, docs/results.md) at float32 precision in either
        # format (tests/test_fastpath.py: a smooth-activation ResNet-8 within 1e-4 of float64). It was
        # CUDA-only for a while on a misreading: a ReLU pre-activation rounded across 0 flips one gradient
        # element, which moved a whole tensor by 4 % on one probe seed, and contiguous memory does the same
        # on another seed. Multi-process CPU (gloo) stays contiguous, like compile: its exact agreement with
        # one process (tests/test_ddp.py) was established in that format.
        cl = device.type == "cuda" or (device.type == "cpu" and world_size == 1)
        why = "" if cl or device.type != "cpu" else " (multi-process CPU training)"
        reasons.append(f"channels_last: auto → {'on' if cl else 'off'}{why}")
    if device.type not in ("cpu", "cuda"):
        if comp:
            raise ConfigError(f"engine.compile=true is supported on cpu and cuda, not {device.type!r}")
        comp = False
    elif comp is None:
        need = COMPILE_MIN_STEPS[device.type]
        if total_steps < need:
            comp, why = False, f"{total_steps} steps < {need}"
        elif device.type == "cpu" and world_size > 1:
            comp, why = False, "multi-process CPU training"
        elif device.type == "cpu" and not has_cpp_compiler():
            comp, why = False, "no C++ compiler for inductor"
        else:
            comp, why = True, f"{total_steps} steps ≥ {need}"
        reasons.append(f"compile: auto → {'on' if comp else 'off'} ({why})")
    elif comp and device.type == "cpu" and not has_cpp_compiler():
        raise ConfigError("engine.compile=true on the CPU needs a C++ compiler (g++), found none")
    return FastPath(bool(cl), bool(comp), "; ".join(reasons) or "set explicitly")


class CompiledForward(nn.Module):
    """A module's forward through torch.compile for one call signature, eagerly for every other.

    The signature (input shape, dtype, memory format, train/eval, grad mode, autocast) of the first call
    with at least `min_batch` images (and, with `grad=True`, with gradients on) is the one compiled, so a
    last partial batch or an evaluation pass never triggers a second compile; `compile_seconds` is the wall
    time of that first compiled call. Attribute lookups (so `get_submodule`, taps, hooks, `no_sync`) fall
    through to the wrapped module, whose parameters the compiled graph shares.
    """

    def __init__(self, module: nn.Module, min_batch: int, grad: bool | None = None) -> None:
        super().__init__()
        self.module = module
        self.min_batch = min_batch
        self.grad = grad
        object.__setattr__(self, "_compiled", torch.compile(module, dynamic=False))
        self._signature: tuple | None = None
        self.compile_seconds: float | None = None

    def _signature_of(self, x: torch.Tensor) -> tuple:
        return (
            tuple(x.shape),
            x.dtype,
            x.is_contiguous(memory_format=torch.channels_last),
            self.module.training,
            torch.is_grad_enabled(),
            torch.is_autocast_enabled(x.device.type),
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(x, torch.Tensor) or has_forward_hooks(self.module):
            return self.module(x, *args, **kwargs)
        signature = self._signature_of(x)
        if signature == self._signature:
            return self._compiled(x)
        grad_ok = self.grad is None or self.grad == torch.is_grad_enabled()
        eligible = x.shape[0] >= self.min_batch and grad_ok
        if self._signature is None and eligible:
            self._signature = signature
            start = time.perf_counter()
            out = self._compiled(x)
            self.compile_seconds = time.perf_counter() - start
            return out
        return self.module(x)

    def get_submodule(self, target: str) -> nn.Module:
        """Module paths (taps) are those of the model itself, under any DDP wrapper."""
        inner = self.module
        if isinstance(inner, nn.parallel.DistributedDataParallel):
            inner = inner.module
        return inner.get_submodule(target) if target else self

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def has_forward_hooks(module: nn.Module) -> bool:
    """True when a forward (pre-)hook would run inside `module`'s forward: feature taps, DoReFa inputs.

    torch.compile does not guard on module hooks (`skip_nnmodule_hook_guards`), so a graph traced without
    hooks, by this module or by another instance of its class (dynamo shares graphs across instances),
    is replayed with hooks added later silently ignored: feature taps then record nothing. Such calls
    therefore run eagerly; hook-free calls, every logit-only method's, keep the compiled graph.
    """
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a `CompiledForward` (others are returned as they are)."""
    return model.module if isinstance(model, CompiledForward) else model
