"""Model zoo: CIFAR models build, run and expose their taps; parameter counts and state-dict keys match the
published RepDistiller/mdistiller models; checkpoints load; the torchvision and timm resolvers work."""

from __future__ import annotations

import functools
import itertools
import sys
import types

import pytest
import torch
from torch import nn

from datakd.api.features import FeatureRecorder, stage_taps
from datakd.errors import DatakdError
from datakd.models import MODELS, create, get_entry, model_taps
from datakd.models.checkpoint_io import load_weights

CIFAR_ZOO = {
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "wrn_28_10",
    "wrn_40_4",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "mobilenetv2",
    "shufflev1",
    "shufflev2",
    "resnet18",
    "resnet34",
    "resnet50",
    "alexnet_cifar",  # role-wise KD (seed 002)
    # role-wise KD Table 4 (tests/test_models_table4.py checks their published parameter counts)
    "wrn_16_4",
    "preresnet20",
    "preresnet32",
    "preresnet44",
    "preresnet56",
    "preresnet110",
    "preresnet164",
    "pyramidnet_200_240",
    "pyramidnet_272_200",
}


@functools.cache
def built(name: str) -> nn.Module:
    """One eval-mode 100-class build per model, shared by the tests that only read it."""
    return create(name, 100).eval()


def final_layer(model: nn.Module) -> nn.Module:
    """The module whose input is the `pre_logits` tap."""
    path, _, kind = model_taps(model)["pre_logits"].partition(":")
    assert kind == "input"
    return model.get_submodule(path)


def check_taps(model: nn.Module, images: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Forward through a recorder on every named tap; logits, stage order and pre_logits are consistent."""
    stages = stage_taps(model)
    assert stages == [f"stage{i}" for i in range(1, len(stages) + 1)] and len(stages) >= 3
    with torch.no_grad(), FeatureRecorder(model, model_taps(model)) as recorder:
        logits, features = recorder.forward(images)
        assert logits.shape == (images.shape[0], num_classes)
        sizes = [tuple(features[t].shape[-2:]) for t in stages]
        assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(sizes)), sizes
        assert features["pre_logits"].dim() == 2
        # the pre_logits tap is exactly what the classifier turns into the logits
        torch.testing.assert_close(final_layer(model)(features["pre_logits"]), logits)
    return features


def test_zoo_names_and_families():
    cifar = {name for name, entry in MODELS.items() if entry.family == "cifar"}
    assert cifar == CIFAR_ZOO
    assert get_entry("mobilenetv1").family == "imagenet"
    for name in CIFAR_ZOO:
        entry = get_entry(name)
        assert entry.description and {"stem", "stage1", "pre_logits"} <= set(entry.taps)


@pytest.mark.parametrize("name", sorted(CIFAR_ZOO))
def test_cifar_model_runs_on_32px_rgb_and_28px_gray(name):
    model = built(name)
    check_taps(model, torch.randn(2, 3, 32, 32), 100)

    gray = create(name, 100, in_channels=1).eval()
    check_taps(gray, torch.randn(2, 1, 28, 28), 100)
    # in_channels only changes the first convolution: same keys, one tensor with another shape
    rgb_shapes = {k: v.shape for k, v in model.state_dict().items()}
    gray_shapes = {k: v.shape for k, v in gray.state_dict().items()}
    assert list(rgb_shapes) == list(gray_shapes)
    assert len([k for k in rgb_shapes if rgb_shapes[k] != gray_shapes[k]]) == 1


def test_tapped_features_carry_gradients_in_training_mode():
    model = create("resnet8", 10).train()
    with FeatureRecorder(model, ["stage2", "pre_logits"]) as recorder:
        logits, features = recorder.forward(torch.randn(4, 3, 32, 32))
    (logits.logsumexp(1).mean() + features["stage2"].pow(2).mean() + features["pre_logits"].mean()).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


# Parameter counts published in seed paper 001 ("Understanding the Success of KD - A Data Augmentation
# Perspective"), appendix A, Table 6 (CIFAR-100, so 100 classes), in millions. The paper counts "only the
# convolutional and fully-connected layers (BN layers not included)". Measured, that is: the weight AND
# bias tensors of every nn.Conv2d and nn.Linear (VGG's convolutions have biases, every classifier has one),
# and no BatchNorm parameter or buffer. All parameters (BN affine included) would give WRN-40-2 2.2552M;
# conv/FC weights without biases would give VGG13 9.4532M - neither matches.
PUBLISHED_MILLIONS = {
    "wrn_40_2": 2.2497,
    "resnet56": 0.8574,
    "resnet32x4": 7.4239,
    "vgg13": 9.4563,
    "resnet50": 23.6521,
    "wrn_16_2": 0.7015,
    "resnet20": 0.2768,
    "resnet8x4": 1.2308,
    "vgg8": 3.9621,
    "mobilenetv2": 0.7945,
    "shufflev2": 1.3393,
}


def conv_fc_parameters(model: nn.Module) -> int:
    """Weights + biases of all Conv2d and Linear layers; BatchNorm excluded."""
    return sum(
        p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters()
    )


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_MILLIONS.items()))
def test_parameter_count_matches_published(name, millions):
    assert f"{conv_fc_parameters(built(name)) / 1e6:.4f}" == f"{millions:.4f}"


def test_parameter_count_definition_is_the_only_one_that_matches():
    wrn = built("wrn_40_2")
    assert f"{sum(p.numel() for p in wrn.parameters()) / 1e6:.4f}" == "2.2552"
    vgg = built("vgg13")
    weights_only = sum(m.weight.numel() for m in vgg.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert f"{weights_only / 1e6:.4f}" == "9.4532"


# Key names and shapes of the reference implementations (HobbitLong/RepDistiller models/*.py, identical in
# megvii-research/mdistiller mdistiller/models/cifar/*.py; MobileNetV1 from mdistiller models/imagenet),
# 100 classes (1000 for mobilenetv1), with the total number of state-dict entries (BN buffers included).
REFERENCE_KEYS: dict[str, tuple[int, dict[str, tuple[int, ...]]]] = {
    "resnet20": (
        128,
        {
            "conv1.weight": (16, 3, 3, 3),
            "layer1.0.conv1.weight": (16, 16, 3, 3),
            "layer2.0.downsample.0.weight": (32, 16, 1, 1),
            "layer2.0.downsample.1.running_var": (32,),
            "layer3.2.bn2.weight": (64,),
            "fc.weight": (100, 64),
            "fc.bias": (100,),
        },
    ),
    "resnet110": (668, {"layer3.17.conv2.weight": (64, 64, 3, 3)}),
    "resnet8x4": (62, {"layer1.0.downsample.0.weight": (64, 32, 1, 1), "fc.weight": (100, 256)}),
    "resnet32x4": (206, {"layer3.4.conv2.weight": (256, 256, 3, 3)}),
    "wrn_40_2": (
        227,
        {
            "conv1.weight": (16, 3, 3, 3),
            "block1.layer.0.bn1.weight": (16,),
            "block1.layer.0.conv1.weight": (32, 16, 3, 3),
            "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
            "block1.layer.5.conv2.weight": (32, 32, 3, 3),
            "block3.layer.0.convShortcut.weight": (128, 64, 1, 1),
            "bn1.weight": (128,),
            "fc.weight": (100, 128),
        },
    ),
    "wrn_16_2": (83, {"block2.layer.1.conv1.weight": (64, 64, 3, 3)}),
    "vgg13": (
        72,
        {
            "block0.0.weight": (64, 3, 3, 3),
            "block0.0.bias": (64,),
            "block0.1.running_mean": (64,),
            "block0.3.weight": (64, 64, 3, 3),
            "block4.4.weight": (512,),
            "classifier.weight": (100, 512),
        },
    ),
    "vgg8": (
        37,
        {
            "block0.0.weight": (64, 3, 3, 3),
            "block4.0.weight": (512, 512, 3, 3),
            "block4.1.weight": (512,),
            "classifier.bias": (100,),
        },
    ),
    "mobilenetv2": (
        320,
        {
            "conv1.0.weight": (16, 3, 3, 3),
            "conv1.1.weight": (16,),
            "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
            "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
            "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
            "blocks.1.0.conv.0.weight": (48, 8, 1, 1),
            "blocks.6.0.conv.7.weight": (160,),
            "conv2.0.weight": (1280, 160, 1, 1),
            "classifier.0.weight": (100, 1280),
        },
    ),
    "shufflev1": (
        296,
        {
            "conv1.weight": (24, 3, 1, 1),
            "layer1.0.conv1.weight": (54, 24, 1, 1),
            "layer1.0.conv3.weight": (216, 18, 1, 1),
            "layer1.1.conv1.weight": (60, 80, 1, 1),
            "layer1.1.conv2.weight": (60, 1, 3, 3),
            "layer2.0.conv1.weight": (60, 80, 1, 1),
            "layer3.3.bn3.weight": (960,),
            "linear.weight": (100, 960),
        },
    ),
    "shufflev2": (
        338,
        {
            "conv1.weight": (24, 3, 1, 1),
            "layer1.0.conv1.weight": (24, 1, 3, 3),
            "layer1.0.conv2.weight": (58, 24, 1, 1),
            "layer1.0.conv5.weight": (58, 58, 1, 1),
            "layer1.1.conv1.weight": (58, 58, 1, 1),
            "layer1.1.conv2.weight": (58, 1, 3, 3),
            "layer3.3.bn3.weight": (232,),
            "conv2.weight": (1024, 464, 1, 1),
            "bn2.weight": (1024,),
            "linear.weight": (100, 1024),
        },
    ),
    "resnet18": (
        122,
        {
            "conv1.weight": (64, 3, 3, 3),
            "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
            "layer4.1.bn2.weight": (512,),
            "linear.weight": (100, 512),
        },
    ),
    "resnet34": (218, {"layer3.5.conv2.weight": (256, 256, 3, 3)}),
    "resnet50": (
        320,
        {
            "layer1.0.conv3.weight": (256, 64, 1, 1),
            "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
            "layer4.2.conv3.weight": (2048, 512, 1, 1),
            "linear.weight": (100, 2048),
        },
    ),
    "mobilenetv1": (
        164,
        {
            "model.0.0.weight": (32, 3, 3, 3),
            "model.1.0.weight": (32, 1, 3, 3),
            "model.1.3.weight": (64, 32, 1, 1),
            "model.13.3.weight": (1024, 1024, 1, 1),
            "model.13.4.running_var": (1024,),
            "fc.weight": (1000, 1024),
        },
    ),
}
# keys the reference does NOT have (no projection where shapes are unchanged)
REFERENCE_ABSENT = {
    "resnet20": ["layer1.0.downsample.0.weight"],
    "wrn_40_2": ["block1.layer.1.convShortcut.weight"],
    "resnet18": ["layer1.0.shortcut.0.weight"],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_state_dict_keys_match_reference(name):
    model = create(name, 1000) if name == "mobilenetv1" else built(name)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    count, expected = REFERENCE_KEYS[name]
    for key, shape in expected.items():
        assert shapes.get(key) == shape, f"{name}: {key} is {shapes.get(key)}, reference {shape}"
    for key in REFERENCE_ABSENT.get(name, []):
        assert key not in shapes
    assert len(shapes) == count


def test_mobilenetv1_imagenet_student():
    model = create("mobilenetv1", 1000).eval()
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}" == "4.2"
    features = check_taps(model, torch.randn(1, 3, 64, 64), 1000)
    assert [features[f"stage{i}"].shape[1] for i in range(1, 5)] == [128, 256, 512, 1024]


# ---------------------------------------------------------------------------------------------- loading


def test_load_weights_round_trip_all_checkpoint_layouts(tmp_path):
    source = create("resnet8", 100).eval()
    with torch.no_grad():  # non-trivial BN statistics so eval outputs depend on them
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = source.state_dict()
    images = torch.randn(2, 3, 32, 32)
    expected = source(images)
    torch.save({"model": state, "epoch": 240, "accuracy": 70.0}, tmp_path / "ckpt_epoch_240.pth")
    layouts = [
        state,
        {"model": state, "epoch": 240, "optimizer": {"state": {}, "param_groups": []}},
        {"state_dict": state},
        {"net": state},
        {f"module.{k}": v for k, v in state.items()},  # saved from a DDP-wrapped model
        str(tmp_path / "ckpt_epoch_240.pth"),
    ]
    for layout in layouts:
        target = create("resnet8", 100).eval()
        report = load_weights(target, layout)
        assert report.ok
        torch.testing.assert_close(target(images), expected)


def test_load_weights_mismatch_is_one_line_naming_the_keys():
    teacher = create("resnet20", 100).state_dict()
    student = create("resnet20", 10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(DatakdError) as info:
        load_weights(student, {"model": teacher})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("checkpoint does not fit model 'resnet20': ")
    assert "fc.weight [100, 64] vs [10, 64]" in message
    for key, value in student.state_dict().items():  # strict failure loads nothing
        torch.testing.assert_close(value, before[key])

    with pytest.raises(DatakdError, match=r"missing keys layer1\.3\.conv1\.weight, .* \(\d+ more\)"):
        load_weights(create("resnet32", 100), teacher)
    with pytest.raises(DatakdError, match=r"unexpected keys layer1\.3\.conv1\.weight"):
        load_weights(create("resnet20", 100), create("resnet32", 100).state_dict())
    with pytest.raises(DatakdError, match="no state dict found"):
        load_weights(student, {"epoch": 3})


def test_load_weights_non_strict_and_old_checkpoints_without_bn_counters():
    teacher = create("resnet20", 100)
    student = create("resnet20", 10)
    report = load_weights(student, {"model": teacher.state_dict()}, strict=False)
    assert [key for key, _, _ in report.mismatched] == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(student.conv1.weight, teacher.conv1.weight)

    legacy = {k: v for k, v in teacher.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_weights(create("resnet20", 100), legacy).ok


# ------------------------------------------------------------------------------------ ImageNet resolvers


@pytest.mark.parametrize("name", ["tv:resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_build_without_weights_and_expose_taps(name):
    model = create(name, 10).eval()
    assert get_entry(name).family == "imagenet"
    features = check_taps(model, torch.randn(2, 3, 64, 64), 10)
    assert len(stage_taps(model)) == 4 and all(features[f"stage{i}"].dim() == 4 for i in range(1, 5))


def test_torchvision_names_and_cifar_precedence():
    assert type(create("resnet18", 10)).__module__ == "datakd.models.cifar.resnetv2"
    assert get_entry("resnet101").taps["stage4"] == "layer4"
    assert get_entry("tv:vgg16_bn").family == "imagenet"
    with pytest.raises(DatakdError, match="did you mean 'resnet18'"):
        get_entry("tv:resnet1800")


def test_torchvision_pretrained_only_on_request(monkeypatch):
    import torchvision

    calls = []
    real_get_model = torchvision.models.get_model

    def fake_get_model(name, weights=None, **kwargs):  # never downloads: builds the architecture only
        calls.append(weights)
        return real_get_model(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    create("tv:resnet18", 10)
    assert calls == [None]
    model = create("tv:resnet18", 10, pretrained=True)
    assert calls[-1] == torchvision.models.ResNet18_Weights.DEFAULT
    assert model.fc.out_features == 10  # the 1000-class head of the weights was replaced


def test_timm_missing_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(DatakdError) as info:
        create("timm:resnet34d", 10)
    assert "pip install 'datakd[timm]'" in str(info.value) and "\n" not in str(info.value)


def test_timm_models_get_taps_from_feature_info(monkeypatch):
    class Tiny(nn.Module):
        def __init__(self, num_classes: int, in_chans: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 4, 3, 2, 1)
            self.stages = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, num_classes)
            self.feature_info = [
                {"num_chs": 4, "reduction": 2, "module": "stem"},
                {"num_chs": 8, "reduction": 4, "module": "stages.0"},
                {"num_chs": 8, "reduction": 8, "module": "stages.1"},
            ]
            self.pretrained_cfg = {"classifier": "fc"}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.head(self.stages(self.stem(x))))

    calls = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append((name, pretrained, num_classes, in_chans))
        return Tiny(num_classes, in_chans)

    fake = types.ModuleType("timm")
    fake.create_model = create_model
    fake.is_model = lambda name: name == "tiny"
    fake.list_models = lambda: ["tiny"]
    monkeypatch.setitem(sys.modules, "timm", fake)

    model = create("timm:tiny", 5, in_channels=1).eval()
    assert calls == [("tiny", False, 5, 1)]
    assert model_taps(model) == {
        "stem": "stem",
        "stage1": "stages.0",
        "stage2": "stages.1",
        "pre_logits": "fc:input",
    }
    with torch.no_grad(), FeatureRecorder(model, ["stage2", "pre_logits"]) as recorder:
        logits, features = recorder.forward(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 5) and features["stage2"].shape == (2, 8, 4, 4)
    with pytest.raises(DatakdError, match="did you mean tiny"):
        create("timm:tinny", 5)
