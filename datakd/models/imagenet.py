"""ImageNet-scale models by name: torchvision (``tv:NAME`` or a plain torchvision name), timm (``timm:NAME``).

Names resolve lazily (`datakd.models.registry.add_resolver`), so nothing is imported until such a model is
asked for:

* ``tv:NAME`` builds ``torchvision.models.get_model(NAME)``; a plain ``NAME`` does the same when the CIFAR
  zoo has no model of that name. The CIFAR zoo owns ``resnet18/34/50`` and ``vgg8..19``, so the ImageNet
  ResNets and VGGs are ``tv:resnet18``, ``tv:vgg16_bn`` etc.; ``resnet101``, ``mobilenet_v2`` or
  ``efficientnet_b0`` work without the prefix.
* ``timm:NAME`` builds ``timm.create_model(NAME)`` when timm is installed (``pip install datakd[timm]``).

Weights are never downloaded unless ``pretrained=True`` is passed (torchvision ``DEFAULT`` weights / timm
pretrained weights). With pretrained torchvision weights and ``num_classes`` other than the weights' own,
the final linear layer is replaced by a freshly initialised one (fine-tuning). Other keyword arguments go to
the torchvision / timm builder unchanged (e.g. ``dropout``).

Named taps (torchvision), all module outputs unless marked ``:input``:

* ResNet / ResNeXt / Wide-ResNet: ``stage1..4`` = ``layer1..4``; ``pre_logits`` = ``fc:input``;
* RegNet: ``stage1..4`` = ``trunk_output.block1..4``; ``pre_logits`` = ``fc:input``;
* MobileNetV2: ``stage1..4`` = ``features.3/6/13/17`` (last block at 1/4, 1/8, 1/16, 1/32 resolution,
  before the 1x1 head conv ``features.18``); ``pre_logits`` = ``classifier.1:input``;
* MobileNetV3-Large: ``features.3/6/12/15``; -Small: ``features.1/3/8/11``; ``pre_logits`` =
  ``classifier.3:input`` (the 1280/1024-d hidden layer after dropout, i.e. what the last linear sees);
* EfficientNet-B0..B7: ``features.2/3/5/7``; EfficientNetV2-S: ``features.2/3/5/6``, -M/-L:
  ``features.2/3/5/7``; ``pre_logits`` = ``classifier.1:input``;
* ConvNeXt: ``features.1/3/5/7``; ``pre_logits`` = ``classifier.2:input``;
* ShuffleNetV2: ``stage1..3`` = ``stage2..4`` (torchvision's names); ``pre_logits`` = ``fc:input``.

``pre_logits`` is always the input of the final linear layer; torchvision's classifier dropout is in-place,
so that input is the post-dropout vector in training mode (identical to the pooled feature in eval mode).
Other torchvision models have no named taps; any module path still works as a tap.

timm models get their taps from ``model.feature_info`` (the first entry at 1/2 resolution is ``stem``, the
others ``stage1..N``) and ``pre_logits`` from the classifier named in ``model.pretrained_cfg``; those are
only known once the model is built, so they appear on the built model (``model.datakd_taps``).
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

from torch import nn

from datakd.errors import ConfigError, DatakdError, choice_error
from datakd.models.registry import ModelEntry, add_resolver

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """The torchvision classification model names (``torchvision.models.list_models``)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _stages(paths: list[str], pre_logits: str) -> dict[str, str]:
    taps = {f"stage{i}": path for i, path in enumerate(paths, start=1)}
    taps["pre_logits"] = pre_logits
    return taps


def _features(*indices: int) -> list[str]:
    return [f"features.{i}" for i in indices]


def torchvision_taps(name: str) -> dict[str, str]:
    """Named taps of torchvision model `name` (empty for families without a table)."""
    if re.fullmatch(r"(resnet|resnext|wide_resnet)\w*", name):
        return _stages(["layer1", "layer2", "layer3", "layer4"], "fc:input")
    if name.startswith("regnet_"):
        return _stages([f"trunk_output.block{i}" for i in range(1, 5)], "fc:input")
    if name == "mobilenet_v2":
        return _stages(_features(3, 6, 13, 17), "classifier.1:input")
    if name == "mobilenet_v3_large":
        return _stages(_features(3, 6, 12, 15), "classifier.3:input")
    if name == "mobilenet_v3_small":
        return _stages(_features(1, 3, 8, 11), "classifier.3:input")
    if re.fullmatch(r"efficientnet_b\d", name):
        return _stages(_features(2, 3, 5, 7), "classifier.1:input")
    if name == "efficientnet_v2_s":
        return _stages(_features(2, 3, 5, 6), "classifier.1:input")
    if name in ("efficientnet_v2_m", "efficientnet_v2_l"):
        return _stages(_features(2, 3, 5, 7), "classifier.1:input")
    if name.startswith("convnext_"):
        return _stages(_features(1, 3, 5, 7), "classifier.2:input")
    if name.startswith("shufflenet_v2_"):
        return _stages(["stage2", "stage3", "stage4"], "fc:input")
    return {}


def _final_linear(model: nn.Module, taps: dict[str, str]) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, layer) of the classifier: the `pre_logits` tap's module, else the last Linear."""
    path = taps.get("pre_logits", "").partition(":")[0]
    if not path:
        linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        path = linears[-1] if linears else ""
    layer = model.get_submodule(path) if path else None
    if not isinstance(layer, nn.Linear):
        raise DatakdError(
            f"cannot find the final linear layer of {type(model).__name__} to resize it; "
            "build it with the weights' own num_classes and replace the head yourself"
        )
    parent_path, _, attribute = path.rpartition(".")
    return model.get_submodule(parent_path), attribute, layer


def build_torchvision(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """torchvision model `name`; ImageNet weights only when `pretrained`, head resized if needed."""
    import torchvision

    try:
        if not pretrained:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except OSError as error:  # includes URLError from the download
            raise DatakdError(
                f"could not fetch torchvision weights {weights} for {name!r}: {error}"
            ) from None
    except TypeError as error:
        raise ConfigError(
            f"torchvision model {name!r} rejected its options {sorted(kwargs)}: {error}"
        ) from None
    if num_classes != len(weights.meta["categories"]):
        parent, attribute, old = _final_linear(model, torchvision_taps(name))
        setattr(parent, attribute, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def _torchvision_entry(name: str, torchvision_name: str) -> ModelEntry:
    def build(num_classes: int = 1000, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_torchvision(torchvision_name, num_classes, pretrained, **kwargs)

    description = f"torchvision {torchvision_name} (random init; pretrained=True loads ImageNet weights)"
    return ModelEntry(name, build, torchvision_taps(torchvision_name), "imagenet", description)


def resolve_torchvision(name: str) -> ModelEntry | None:
    """``tv:NAME`` or a plain torchvision classification model name."""
    if name.startswith(TV_PREFIX):
        torchvision_name = name[len(TV_PREFIX) :]
        if torchvision_name not in torchvision_names():
            raise choice_error("torchvision model", torchvision_name, torchvision_names())
        return _torchvision_entry(name, torchvision_name)
    if name in torchvision_names():
        return _torchvision_entry(name, name)
    return None


def timm_taps(model: nn.Module) -> dict[str, str]:
    """Taps of a built timm model, from its ``feature_info`` and its pretrained config's classifier."""
    taps: dict[str, str] = {}
    stages = []
    for info in getattr(model, "feature_info", None) or []:
        module = info.get("module") if isinstance(info, dict) else None
        if not module:
            continue
        if info.get("reduction", 0) <= 2 and not stages and "stem" not in taps:
            taps["stem"] = module
        else:
            stages.append(module)
    taps.update({f"stage{i}": module for i, module in enumerate(stages, start=1)})
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = config.get("classifier") if isinstance(config, dict) else None
    if isinstance(classifier, str):
        try:
            head = model.get_submodule(classifier)
        except AttributeError:
            head = None
        if isinstance(head, nn.Linear):
            taps["pre_logits"] = f"{classifier}:input"
    return taps


def _import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise DatakdError(
            f"model {name!r} needs timm, which is not installed: pip install 'datakd[timm]'"
        ) from None
    return timm


def resolve_timm(name: str) -> ModelEntry | None:
    """``timm:NAME`` (needs timm)."""
    if not name.startswith(TIMM_PREFIX):
        return None
    timm_name = name[len(TIMM_PREFIX) :]
    timm = _import_timm(name)
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DatakdError(f"unknown timm model {timm_name!r}{hint}; see timm.list_models()")
    # timm taps are only known once the model exists: the factory fills this entry's own (fresh) dict,
    # which `create` copies onto the model after building it.
    taps: dict[str, str] = {}

    def build(
        num_classes: int = 1000, pretrained: bool = False, in_channels: int = 3, **kwargs: Any
    ) -> nn.Module:
        model = timm.create_model(
            timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
        taps.update(timm_taps(model))
        return model

    return ModelEntry(name, build, taps, "imagenet", f"timm {timm_name} (pretrained=True loads timm weights)")


add_resolver(
    resolve_torchvision,
    [
        (
            "tv:NAME",
            "any torchvision classification model, e.g. tv:resnet18 (no weights unless pretrained=true)",
        ),
        ("NAME", "a plain torchvision name the CIFAR zoo does not use, e.g. resnet101"),
    ],
)
add_resolver(resolve_timm, [("timm:NAME", "any timm model, e.g. timm:resnet34d (pip install datakd[timm])")])
