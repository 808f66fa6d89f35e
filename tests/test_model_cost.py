"""`forward_flops` against a hand count, and `datakd info --model` printing it."""

from __future__ import annotations

import pytest
from torch import nn

from datakd.cli import main
from datakd.models.cost import forward_flops


def test_forward_flops_matches_a_hand_count_and_restores_the_mode() -> None:
    # Conv 1→2, 3×3, no padding, on 5×5: 2×3×3 outputs × 9 MACs = 162 MACs; Linear 18→4: 72 MACs.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 4))
    model.train()
    assert forward_flops(model, (1, 5, 5)) == 2 * (162 + 72)
    assert model.training


def test_forward_flops_is_per_image_and_grows_with_depth() -> None:
    from datakd.models import create

    small, large = (forward_flops(create(n, 10, in_channels=1), (1, 28, 28)) for n in ("resnet8", "resnet20"))
    # Each extra basic block of a CIFAR ResNet adds two 3×3 convolutions; ResNet-20 has 3× ResNet-8's blocks.
    assert 3.0 < large / small < 3.5
    stem = 2 * 16 * 28 * 28 * 9  # the 1→16 3×3 stem alone
    assert small > stem


def test_info_model_prints_forward_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", "resnet8", "--input", "1x28x28", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "forward: 0.0187 GFLOPs per image of 1x28x28" in out
