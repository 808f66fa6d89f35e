"""RepDistiller/mdistiller (and TST-code) model names work unchanged, in any case, in `create` and recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datakd.config import config_from_dict
from datakd.errors import DatakdError
from datakd.models import canonical_name, create, get_entry, register_alias, registry

# RepDistiller's models/__init__.py model_dict keys (mdistiller's cifar_model_dict uses the same spellings)
REPDISTILLER = {
    "resnet8": "resnet8", "resnet14": "resnet14", "resnet20": "resnet20", "resnet32": "resnet32",
    "resnet44": "resnet44", "resnet56": "resnet56", "resnet110": "resnet110", "resnet8x4": "resnet8x4",
    "resnet32x4": "resnet32x4", "ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
    "wrn_16_1": "wrn_16_1", "wrn_16_2": "wrn_16_2", "wrn_40_1": "wrn_40_1", "wrn_40_2": "wrn_40_2",
    "vgg8": "vgg8", "vgg11": "vgg11", "vgg13": "vgg13", "vgg16": "vgg16", "vgg19": "vgg19",
    "MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflev1", "ShuffleV2": "shufflev2",
    # TST's configs (shaoshitong/TST SDAKD_FOR_BASELINE/configs): vgg13_bn, vgg8_bn, mobilenetV2
    "vgg13_bn": "vgg13", "vgg8_bn": "vgg8", "mobilenetV2": "mobilenetv2",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REPDISTILLER))
def test_names_resolve_to_the_registered_model(name: str) -> None:
    assert canonical_name(name) == REPDISTILLER[name]
    assert get_entry(name) is get_entry(REPDISTILLER[name])
    assert get_entry(name.upper()) is get_entry(REPDISTILLER[name])


def test_create_builds_the_same_network_and_keys() -> None:
    torch.manual_seed(0)
    a = create("ShuffleV1", num_classes=100)
    torch.manual_seed(0)
    b = create("shufflev1", num_classes=100)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.datakd_taps == b.datakd_taps and "stage1" in a.datakd_taps
    assert type(create("resnet8X4", num_classes=10)) is type(create("resnet8x4", num_classes=10))
    assert get_entry("ResNet18@w4a4").taps == get_entry("resnet18@w4a4").taps  # resolvers see the alias too


def test_recipe_accepts_repdistiller_names(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {"student": {"name": "MobileNetV2"}, "teacher": {"name": "ResNet50"}, "out": str(tmp_path)}
    )
    student = create(cfg.student.name, num_classes=100)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert get_entry(cfg.teacher.name).name == "resnet50"


def test_aliases_are_an_extension_point_and_unknown_names_still_fail(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))  # keep the global table clean
    register_alias("my_tiny_net", "resnet8")
    assert get_entry("My_Tiny_Net") is get_entry("resnet8")
    with pytest.raises(DatakdError, match="unknown model 'ResNet9000'"):
        get_entry("ResNet9000")
