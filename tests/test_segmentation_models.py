"""Segmentation models by name (datakd.models.segmentation): outputs, dilation, taps, checkpoints, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from datakd.api.features import FeatureRecorder
from datakd.errors import ConfigError, DatakdError
from datakd.models import create, get_entry, model_taps
from datakd.models.registry import MODELS

K = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small convolutions are far slower with two threads on a shared machine than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_names_and_family():
    names = {name for name, entry in MODELS.items() if entry.family == "segmentation"}
    expected = {"pspnet_r18", "pspnet_r50", "pspnet_r101", "fcn_r50", "fcn_r101", "deeplabv3_r50"}
    expected |= {"deeplabv3_r101", "pspnet_r18_tiny", "pspnet_r50_tiny", "pspnet_r18_nano"}
    assert expected <= names
    taps = get_entry("pspnet_r18").taps
    assert taps["stage3"] == "backbone.layer3" and taps["decode_head"] == "classifier"


@pytest.mark.parametrize("name", ["pspnet_r18_tiny", "fcn_r18_tiny", "deeplabv3_r18_nano", "pspnet_r50_tiny"])
def test_forward_backward_at_input_resolution(name):
    model = create(name, K).train()
    images = torch.randn(2, 3, 64, 48)
    labels = torch.randint(0, K, (2, 64, 48))
    labels[:, :4] = 255
    out = model(images)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, K, 64, 48)
    loss = F.cross_entropy(out["out"], labels, ignore_index=255) + 0.4 * F.cross_entropy(
        out["aux"], labels, ignore_index=255
    )
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.layer1.parameters())


def stage_sizes(model: nn.Module, side: int) -> dict[str, tuple[int, ...]]:
    model.eval()
    with FeatureRecorder(model, list(model_taps(model))) as recorder, torch.no_grad():
        _, features = recorder.forward(torch.randn(1, 3, side, side))
    return {tap: tuple(f.shape[1:]) for tap, f in features.items() if isinstance(f, torch.Tensor)}


def test_pspnet_r18_is_dilated_to_output_stride_8():
    sizes = stage_sizes(create("pspnet_r18", K), 64)
    assert (
        sizes["stage4"] == (512, 8, 8) and sizes["stage3"] == (256, 8, 8) and sizes["stage2"] == (128, 8, 8)
    )
    assert sizes["decode_features"] == (128, 8, 8)  # mmseg's PSPNet-R18 head: in / 4 channels
    assert sizes["decode_head"] == (K, 8, 8) and sizes["aux_head"] == (K, 8, 8)
    assert stage_sizes(create("pspnet_r18_tiny", K, output_stride=16), 64)["stage4"] == (128, 4, 4)


def test_width_variants_have_fewer_parameters_and_aux_is_optional():
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert (
        count(create("pspnet_r18_nano", K))
        < count(create("pspnet_r18_tiny", K))
        < count(create("pspnet_r18", K))
    )
    model = create("deeplabv3_r18_nano", K, aux_loss=False).eval()
    assert set(model(torch.randn(1, 3, 32, 32))) == {"out"}


def test_torchvision_fcn_state_dict_loads_and_round_trips(tmp_path):
    from torchvision.models.segmentation import fcn_resnet50

    reference = fcn_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=True)
    path = tmp_path / "fcn.pth"
    torch.save(reference.state_dict(), path)
    ours = create("fcn_r50", K, checkpoint=str(path)).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images)["out"], reference.eval()(images)["out"])
    with pytest.raises(DatakdError, match="shape mismatch"):
        create("fcn_r50", K + 1, checkpoint=str(path))


def test_bad_options_fail_clearly():
    with pytest.raises(ConfigError, match="output_stride"):
        create("pspnet_r18_tiny", K, output_stride=4)
    with pytest.raises(ConfigError, match="channels"):
        create("fcn_r18_tiny", K, channels=32)
    with pytest.raises(ConfigError, match="dilation"):
        create("pspnet_r18_tiny", K, dilation=2)
    with pytest.raises(DatakdError, match="did you mean 'pspnet_r18'"):
        create("pspnet_r1", K)
