"""`datakd info`: a model's parameters, forward FLOPs and taps (`--model NAME`), or a recipe's loss-term
costs (`--recipe`).

`--recipe FILE` builds the recipe's student and teacher (random weights), sets the loss terms up on a
dummy context (random sample images of the recipe's input size), runs one forward of each term and
prints its parameter count and forward FLOPs per image, measured with
`torch.utils.flop_counter.FlopCounterMode` (FLOPs = 2 × multiply-accumulates). Transformation modules of
feature methods (e.g. DPK's encoders/decoder) are what this measures; compare with a paper's tables.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from datakd.api.context import SetupContext, TermInputs, View, record
from datakd.api.features import feature_shapes
from datakd.commands.base import Command, register_command
from datakd.config import RunConfig, load_config
from datakd.data.loaders import Normalizer
from datakd.errors import DatakdError
from datakd.losses.base import LossTerm, build_terms
from datakd.models import create, model_taps
from datakd.models.cost import forward_flops
from datakd.models.registry import get_entry

# Input size per dataset when --input is not given (everything else is CIFAR-sized).
DEFAULT_SIDE = {"tiny-imagenet": 64}


@register_command("info")
class Info(Command):
    """Show a model's parameters and named taps, or a recipe's loss terms with their parameters and FLOPs."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--model", help="model name (see `datakd list models`)")
        what.add_argument("--recipe", help="a recipe YAML: parameters and FLOPs of its loss terms")
        parser.add_argument("--num-classes", type=int, default=100)
        parser.add_argument(
            "--input",
            help="input shape CxHxW (default: 3x32x32 for a model; for a recipe its data.image_size "
            "for imagefolder, 64 for tiny-imagenet, else 32, with the student's in_channels)",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=8,
            help="batch of the measured forward (--recipe); FLOPs are per image",
        )
        parser.add_argument(
            "--set", action="append", default=[], metavar="key=value", help="recipe override (repeatable)"
        )
        parser.add_argument(
            "--modules", action="store_true", help="also list every module path (usable as a tap)"
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.recipe:
            return self.run_recipe(args)
        shape = parse_shape(args.input or "3x32x32")
        kwargs = {"in_channels": shape[0]} if shape[0] != 3 else {}
        model = create(args.model, args.num_classes, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        print(f"model {args.model}: {params:,} parameters ({params / 1e6:.4f}M), {args.num_classes} classes")
        if get_entry(args.model).family != "detection":  # a detector's cost depends on its detections
            flops = forward_flops(model, shape)
            print(f"forward: {flops / 1e9:.4f} GFLOPs per image of {'x'.join(map(str, shape))}")
        taps = model_taps(model)
        shapes = feature_shapes(model, list(taps), torch.zeros(2, *shape)) if taps else {}
        if taps:
            print("named taps:")
            width = max(len(t) for t in taps)
            for tap, path in taps.items():
                print(f"  {tap:<{width}}  {path:<28} {list(shapes[tap])}")
        if get_entry(args.model).family == "detection":
            print_detector_outputs(model, shape)
        if args.modules:
            print("module paths:")
            for name, module in model.named_modules():
                if name:
                    print(f"  {name}  ({type(module).__name__})")
        return 0

    def run_recipe(self, args: argparse.Namespace) -> int:
        cfg = load_config(args.recipe, args.set)
        if cfg.task != "classification":
            raise DatakdError(
                f"datakd info --recipe measures classification terms; {args.recipe} is a {cfg.task} recipe "
                f"(its models' taps and outputs: datakd info --model {cfg.student.name})"
            )
        if args.batch < 1:
            raise DatakdError(f"--batch must be positive, got {args.batch}")
        student, teacher = recipe_models(cfg, args.num_classes)
        shape = parse_shape(args.input) if args.input else recipe_input(cfg)
        images = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))
        ctx = dummy_context(cfg, student, teacher, args.num_classes, images)
        teacher_text = cfg.teacher.name or "none"
        print(
            f"recipe {args.recipe}: student {cfg.student.name}, teacher {teacher_text}, "
            f"input {'x'.join(map(str, shape))}, batch {args.batch}"
        )
        print(f"{'term':<12} {'type':<10} {'parameters':>16}  {'GFLOPs/image':>12}")
        for term in build_terms(cfg.loss):
            kind = cfg.loss[term.term_name].get("type", term.term_name)
            term.setup(ctx)
            flops = term_flops(term, student, teacher, images)
            params = sum(p.numel() for p in term.parameters())
            print(f"{term.term_name:<12} {kind:<10} {params:>16,}  {flops / args.batch / 1e9:>12.4f}")
            for name, count in submodule_params(term):
                print(f"  {name:<34} {count:>16,}  ({count / 1e6:.2f}M)")
        return 0


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DatakdError(f"--input must look like 3x32x32, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise DatakdError(f"--input must look like 3x32x32, got {text!r}")
    return shape


def recipe_models(cfg: RunConfig, num_classes: int) -> tuple[nn.Module, nn.Module | None]:
    if not cfg.student.name:
        raise DatakdError("the recipe names no student (student.name)")
    student = create(cfg.student.name, num_classes, **cfg.student.kwargs)
    teacher = create(cfg.teacher.name, num_classes, **cfg.teacher.kwargs) if cfg.teacher.name else None
    return student.eval(), None if teacher is None else teacher.eval().requires_grad_(False)


def recipe_input(cfg: RunConfig) -> tuple[int, int, int]:
    channels = int(cfg.student.kwargs.get("in_channels", 3))
    if cfg.data.dataset == "imagefolder":
        return channels, cfg.data.image_size, cfg.data.image_size
    side = DEFAULT_SIDE.get(cfg.data.dataset, 32)
    return channels, side, side


def dummy_context(
    cfg: RunConfig, student: nn.Module, teacher: nn.Module | None, num_classes: int, images: torch.Tensor
) -> SetupContext:
    """A SetupContext without data: the recipe's models and sizes, random images as the sample batch."""
    channels = images.shape[1]
    cpu = torch.device("cpu")
    return SetupContext(
        student=student,
        teacher=teacher,
        num_classes=num_classes,
        num_train=0,
        train_labels=torch.zeros(0, dtype=torch.long),
        sample_images=images,
        device=cpu,
        batch_size=cfg.data.batch_size,
        steps_per_epoch=1,
        total_epochs=cfg.total_epochs,
        normalizer=Normalizer((0.0,) * channels, (1.0,) * channels, cpu),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        seed=cfg.seed,
        extra={"config": cfg},
    )


@torch.no_grad()
def print_detector_outputs(model: nn.Module, shape: tuple[int, ...]) -> None:
    """A detector's FPN levels (taps `fpn.<level>`) and head outputs on one image of `shape`."""
    from datakd.models.detection.forward import run_detector

    model.eval()
    outputs = run_detector(model, [torch.rand(*shape)], None, losses=False)
    print(f"FPN levels (taps fpn.<level>), after the detector's resize to {list(outputs['padded_size'])}:")
    for level, feature in outputs["features"].items():
        print(f"  fpn.{level:<6} {list(feature.shape[1:])}")
    print(f"family {outputs['family']}; head outputs (TermInputs.student_outputs):")
    for key in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        if outputs.get(key) is not None:
            print(f"  {key:<16} {list(outputs[key].shape[1:])}  (anchors × values)")
    if outputs["family"] in ("rcnn", "maskrcnn"):
        print(
            "  roi_class_logits  [R, K+1] on the student's sampled proposals "
            "(the teacher's box head on them too)"
        )


def _flop_mapping() -> dict[Any, Any]:
    """Count CPU attention too (FlopCounterMode knows only the GPU fused-attention kernels)."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    return {op: cpu_sdpa}


def term_flops(term: LossTerm, student: nn.Module, teacher: nn.Module | None, images: torch.Tensor) -> int:
    """Forward FLOPs of one call of `term` on a batch (the models' own forward passes excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        s_logits, s_feats = record(student, images, term.student_taps)
        t_logits, t_feats = None, {}
        if term.needs_teacher:
            if teacher is None:
                raise DatakdError(
                    f"loss term {term.term_name!r} needs a teacher; the recipe has no teacher.name"
                )
            t_logits, t_feats = record(teacher, images, term.teacher_taps)
        labels = torch.zeros(images.shape[0], dtype=torch.long)
        inputs = TermInputs(View("main", images, labels), s_logits, t_logits, s_feats, t_feats, 0, 0, 0, 1, 1)
        with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
            term(inputs)
    return counter.get_total_flops()


def submodule_params(term: nn.Module) -> list[tuple[str, int]]:
    """Parameter counts of a term's sub-modules one level into containers (e.g. DPK's per-stage modules)."""
    rows = []
    for name, module in term.named_children():
        children = list(module.named_children()) if isinstance(module, (nn.ModuleDict, nn.ModuleList)) else []
        for child, sub in children or [("", module)]:
            count = sum(p.numel() for p in sub.parameters())
            if count:
                rows.append((f"{name}.{child}" if child else name, count))
    return rows
