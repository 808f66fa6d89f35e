"""The fast path: `auto` rules, and compiled training on the CPU (inductor) against eager training.

Compiling on a small shared CPU takes minutes for ResNet-20-sized graphs, so the compiled runs here use the
smallest zoo model (ResNet-8, 28×28 grayscale) and one module-scoped set of runs for both checks.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch

from datakd.api.context import record
from datakd.checkpoint import atomic_save, load_checkpoint
from datakd.engine.build import build_trainer
from datakd.engine.fastpath import (
    COMPILE_MIN_STEPS,
    CompiledForward,
    has_cpp_compiler,
    resolve_fast_path,
    unwrap,
)
from datakd.engine.trainer import Trainer
from datakd.errors import ConfigError
from datakd.models import create
from tests.helpers import tiny_config

CPU = torch.device("cpu")


def test_auto_compiles_only_long_runs_and_rejects_bad_values() -> None:
    short = resolve_fast_path("auto", "auto", CPU, 700)
    assert short.channels_last and not short.compile and "700 steps" in short.reason
    assert resolve_fast_path("auto", "auto", torch.device("cuda"), 700).channels_last
    assert not resolve_fast_path("auto", "auto", CPU, 700, world_size=2).channels_last  # gloo DDP
    assert not resolve_fast_path(False, "auto", CPU, 700).channels_last  # explicit false is honoured
    long = resolve_fast_path("auto", "auto", CPU, COMPILE_MIN_STEPS["cpu"])
    assert long.compile == has_cpp_compiler()
    assert not resolve_fast_path("auto", "auto", CPU, 10**6, world_size=2).compile  # gloo DDP stays eager
    assert resolve_fast_path(False, False, CPU, 10**6) == resolve_fast_path(False, False, CPU, 1)
    with pytest.raises(ConfigError, match=r"engine.compile must be true, false or auto, got 'fast'"):
        resolve_fast_path("auto", "fast", CPU, 1)


def _smooth_resnet8(seed: int) -> torch.nn.Module:
    """ResNet-8 with Softplus for ReLU. ReLU's derivative jumps at 0, so when float32 rounding puts a
    pre-activation on the other side of 0 than float64 does, one element's gradient flips and a whole
    gradient tensor can move by percents. That happens for *any* float32 kernel: with ReLU and 2 torch
    threads, seed 2 of this probe gave eager contiguous memory a 5.6 % error (channels-last 5e-6), seed 0
    the reverse (4 % for channels-last, 4e-6 contiguous). A smooth activation leaves only the kernels' own
    rounding to measure."""
    torch.manual_seed(seed)
    model = create("resnet8", 10, in_channels=1).train()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Softplus(beta=2.0))
    return model


def _relative_grad_errors(seed: int, memory_format: torch.memory_format) -> dict[str, float]:
    """Per-parameter max |grad - float64 grad| / max |float64 grad| of one training-mode CE step."""
    model = _smooth_resnet8(seed)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def grads(net: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        torch.nn.functional.cross_entropy(net(images), y).backward()
        return {n: p.grad.double() for n, p in net.named_parameters()}

    reference = grads(copy.deepcopy(model).double(), x.double())
    got = grads(
        copy.deepcopy(model).to(memory_format=memory_format), x.contiguous(memory_format=memory_format)
    )
    return {n: float((got[n] - r).abs().max() / r.abs().max()) for n, r in reference.items()}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_cpu_gradients_are_float32_precise_in_either_memory_format(memory_format) -> None:
    """Both formats `auto` may pick on the CPU give float32-precise training gradients (several seeds)."""
    for seed in range(3):
        errors = _relative_grad_errors(seed, memory_format)
        assert max(errors.values()) < 1e-4, (seed, max(errors.items(), key=lambda kv: kv[1]))


def test_compiled_forward_uses_the_graph_only_for_its_signature(monkeypatch) -> None:
    model = torch.nn.Linear(3, 2)
    gate = CompiledForward(model, min_batch=4, grad=False)
    calls = []
    object.__setattr__(gate, "_compiled", lambda x: calls.append(tuple(x.shape)) or model(x))
    with torch.no_grad():
        gate(torch.zeros(2, 3))  # smaller than a training batch: eager, not compiled
        gate(torch.zeros(4, 3))  # the compiled signature
        gate(torch.zeros(4, 3))
    gate(torch.zeros(4, 3))  # same shape with gradients on: eager
    assert calls == [(4, 3), (4, 3)]
    assert gate.weight is model.weight and gate.get_submodule("") is gate


def test_feature_taps_are_recorded_under_the_fast_path() -> None:
    """A graph compiled without hooks, by this model or another of its class, must not swallow taps."""
    if not has_cpp_compiler():
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    first = CompiledForward(create("resnet8", 10, in_channels=1), 16, grad=True)
    first(x).sum().backward()  # the training signature, compiled without taps
    assert first.compile_seconds is not None
    second = CompiledForward(create("resnet8", 10, in_channels=1), 16, grad=True)
    for gate in (first, second):  # the same model with taps now; a new model whose first call has taps
        logits, features = record(gate, x, ["stage2"])
        expected_logits, expected = record(unwrap(gate), x, ["stage2"])
        torch.testing.assert_close(features["stage2"], expected["stage2"])
        torch.testing.assert_close(logits, expected_logits)
    # A hook-free call takes a compiled graph, even one another instance traced, with its own weights
    third = CompiledForward(create("resnet8", 10, in_channels=1), 16, grad=True)
    torch.testing.assert_close(third(x), unwrap(third)(x))
    assert third.compile_seconds is not None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Eager, compiled, and compiled-crashed-then-resumed KD runs of the same tiny config."""
    if not has_cpp_compiler():
        pytest.skip("inductor's CPU backend needs a C++ compiler")
    root = tmp_path_factory.mktemp("fastpath")
    teacher = root / "teacher.pt"
    torch.manual_seed(1)
    model = create("resnet8", 10, in_channels=1)
    atomic_save(
        {
            "model": model.state_dict(),
            "model_name": "resnet8",
            "model_kwargs": {"in_channels": 1},
            "num_classes": 10,
        },
        teacher,
    )

    def config(out: Path, compile: bool):
        return tiny_config(
            out,
            data={"train_subset": 256},
            teacher={"checkpoint": str(teacher)},
            loss={"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
            engine={
                "compile": compile,
                "channels_last": True,
                "tensorboard": False,
                "checkpoint_every_iters": 2,
            },
        )

    paths = {name: root / name for name in ("eager", "compiled", "resumed")}
    build_trainer(config(paths["eager"], False), "distill").fit()
    trainer = build_trainer(config(paths["compiled"], True), "distill")
    trainer.fit()
    assert isinstance(trainer.student, CompiledForward) and isinstance(trainer.teacher, CompiledForward)
    assert trainer.compile_seconds() is not None
    # Crash mid epoch 2 (4 steps per epoch; the checkpoint after step 6 is the last), then resume.
    original, calls = Trainer.train_step, {"n": 0}

    def failing_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, batch)

    Trainer.train_step = failing_step
    try:
        with pytest.raises(KeyboardInterrupt):
            build_trainer(config(paths["resumed"], True), "distill").fit()
    finally:
        Trainer.train_step = original
    assert load_checkpoint(paths["resumed"] / "last.pt")["step"] == 2
    build_trainer(config(paths["resumed"], True), "distill", resume=True).fit()
    return paths


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as handle:
        return [float(row["loss_total"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_compiled_training_follows_eager_training(runs: dict[str, Path]) -> None:
    eager, compiled = _losses(runs["eager"]), _losses(runs["compiled"])
    assert len(eager) == len(compiled) == 2
    assert compiled == pytest.approx(eager, rel=1e-4)
    a, b = (
        load_checkpoint(runs["eager"] / "last.pt")["model"],
        load_checkpoint(runs["compiled"] / "last.pt")["model"],
    )
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3, rtol=1e-2), key


@pytest.mark.slow
def test_compiled_resume_is_bit_identical(runs: dict[str, Path]) -> None:
    a, b = (
        load_checkpoint(runs["compiled"] / "last.pt")["model"],
        load_checkpoint(runs["resumed"] / "last.pt")["model"],
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(runs["compiled"]) == _losses(runs["resumed"])
