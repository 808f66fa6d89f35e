"""The ``tst`` augmenter: holds θ (the learnable f_DE) and applies it every step (Stage III).

Every training step sees one view ``main`` = [f_DE(x) ‖ x] (2B images, labels [y ‖ y]); with batch-mean
CE/KD over the 2B images this is ½·loss on the augmented half + ½·loss on the original half, as in the
authors' code. f_DE runs without gradient here. θ_p and θ_m are parameters of this module (saved with the
run). Stage II, which searches θ, is the ``tst_search`` stage event (`datakd.events.tst_search`); its
settings (α, β, lr, momentum, clipping, ALRS) are options of this augmenter, where the recipes set them.
`policy_rows` describes the current θ for the policy log ``tst_policy.csv`` that the event writes.

``fde: false`` is the control that isolates f_DE: the same 2B batch [x ‖ x] and the same loss, with f_DE
replaced by the identity (no encoders, no Stage II), so TST − control measures what f_DE's images add.

Detection and segmentation (the run's task, read in `setup`): f_DE is the one-affine module of App. D.1
(`TSTPolicy.apply_one_affine`, Eqs. 6–8) and the view is [f_DE(x) ‖ x] with the targets warped by Â
(`datakd.augmenters.tst.dense`, `geometry`): boxes/masks of detection (objects below `min_visible` or
thinner than `min_box_size` px dropped, the fraction logged as ``tst_dropped_objects``), label maps of
segmentation (nearest, 255 from outside). Stage II's objective for these tasks is `dense_search_loss`.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from datakd.api.context import SetupContext, StepContext, View
from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.tst.dense import (
    DenseAugmented,
    augment_detection,
    augment_segmentation,
    detection_search_loss,
    segmentation_search_loss,
)
from datakd.augmenters.tst.encoder_file import FitConfig, check_compatible, fill_of, load_encoders
from datakd.augmenters.tst.encoders import black_fill, make_encoders, set_fill
from datakd.augmenters.tst.geometry import MIN_SIZE, MIN_VISIBLE
from datakd.augmenters.tst.ops import MAGNITUDE_OPS, OPS
from datakd.augmenters.tst.policy import RBD_MODES, TSTPolicy
from datakd.checkpoint import atomic_write_text
from datakd.data.loaders import Batch, Normalizer
from datakd.errors import ConfigError, DatakdError, choice_error

POLICY_FILE = "tst_policy.csv"
POLICY_COLUMNS = ("epoch", "call", "pass", "search_step", "op", "p", "p_apply", "m", "loss", "lr")


@register_augmenter("tst")
class TSTAugmenter(Augmenter):
    """TST (seed 000): learnable f_DE over 14 sub-policies; each step trains on [f_DE(x) ‖ x]."""

    view_names = ("main",)
    tasks = ("classification", "detection", "segmentation")

    def __init__(
        self,
        encoders: str | None = None,
        prior: bool = True,
        freeze_encoders: bool = True,
        num_ops: int = 4,
        rbd_mode: str = "code",
        temperature: float = 0.05,
        ops: list[str] | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        lr: float = 0.01,
        momentum: float = 0.9,
        clip_grad_norm: float | None = None,  # opt-in; f9616a2 does not clip
        alrs_threshold: float = 0.02,
        alrs_ratio: float = 0.02,
        alrs_decay: float = 0.9,
        fit: dict[str, Any] | None = None,
        fde: bool = True,
        min_visible: float = MIN_VISIBLE,
        min_box_size: float = MIN_SIZE,
    ) -> None:
        super().__init__()
        self.fde = fde
        if isinstance(min_visible, bool) or not 0 <= min_visible <= 1:
            raise ConfigError(f"tst.min_visible must be a fraction in [0, 1], got {min_visible!r}")
        if isinstance(min_box_size, bool) or not min_box_size > 0:
            raise ConfigError(f"tst.min_box_size must be a positive number of pixels, got {min_box_size!r}")
        self.min_visible, self.min_box_size = float(min_visible), float(min_box_size)
        self.task = "classification"  # the run's task, set in setup
        self.normalizer: Normalizer | None = None
        if rbd_mode not in RBD_MODES:
            raise choice_error("tst.rbd_mode", rbd_mode, RBD_MODES, ConfigError)
        for name in ops or []:
            if name not in OPS:
                raise choice_error("tst op", name, OPS, ConfigError)
        active = list(ops or OPS)
        if not 1 <= num_ops <= len(active):
            raise ConfigError(
                f"tst.num_ops must be between 1 and {len(active)} (the active ops), got {num_ops}"
            )
        needs_encoders = any(name in MAGNITUDE_OPS for name in active)
        if prior and needs_encoders and not encoders and fde:
            raise ConfigError(
                "tst.encoders: give the Stage I file (`datakd tst fit --config RECIPE ...` writes it), "
                "or set prior: false for the no-prior ablation"
            )
        if not prior and encoders:
            raise ConfigError("tst: prior: false uses unfitted encoders; remove tst.encoders")
        if alpha < 0 or beta < 0 or lr <= 0:
            raise ConfigError(f"tst: alpha, beta must be >= 0 and lr > 0, got {alpha}, {beta}, {lr}")
        self.fit_config = FitConfig.from_dict(fit)  # Stage I settings `datakd tst fit --config` uses
        self.encoders_path = encoders
        self.prior = prior
        self.freeze_encoders = freeze_encoders
        self.num_ops = num_ops
        self.rbd_mode = rbd_mode
        self.temperature = temperature
        self.ops = active
        self.alpha, self.beta = alpha, beta
        self.lr, self.momentum = lr, momentum
        self.clip_grad_norm = clip_grad_norm
        self.alrs_options = {"threshold": alrs_threshold, "ratio": alrs_ratio, "decay": alrs_decay}
        self.policy: TSTPolicy | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: SetupContext) -> None:
        self.task = str(ctx.extra.get("task", "classification"))
        self.normalizer = ctx.normalizer
        if not self.fde:  # the control: [x ‖ x], nothing to load
            return
        sample = ctx.sample_images
        channels = int(sample[0].shape[0] if isinstance(sample, (list, tuple)) else sample.shape[1])
        encoders = make_encoders(channels)
        fill = black_fill(ctx.normalizer, channels, ctx.device)
        if self.prior and self.encoders_path:
            payload = load_encoders(self.encoders_path)
            check_compatible(payload, ctx.mean, ctx.std, channels, str(self.encoders_path))
            stored = payload["encoders"]
            missing = [op for op in self.ops if op in MAGNITUDE_OPS and op not in stored]
            if missing:
                raise DatakdError(
                    f"TST encoders {self.encoders_path!r} have no fit for {missing}; fit them "
                    f"(datakd tst fit) or restrict tst.ops"
                )
            for op, state in stored.items():
                encoders[op].load_state_dict(state)
            if fill_of(payload) == "zero":
                warnings.warn(
                    f"TST encoders {self.encoders_path!r} are a version-1 fit (uncovered pixels filled "
                    f"with normalised 0, not black like their targets); kept as fitted. `datakd tst fit` "
                    f"refits them",
                    stacklevel=2,
                )
                fill = torch.zeros_like(fill)
        set_fill(encoders, fill)
        encoders.requires_grad_(not self.freeze_encoders)
        self.policy = TSTPolicy(
            encoders, ctx.normalizer, self.num_ops, self.rbd_mode, self.temperature, self.ops
        )

    def require_policy(self) -> TSTPolicy:
        if not self.fde:
            raise DatakdError("tst with fde: false has no f_DE (the control arm); Stage II needs fde: true")
        if self.policy is None:
            raise DatakdError("the tst augmenter was used before setup()")
        return self.policy

    # ------------------------------------------------------------------ Stage III
    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        if self.task != "classification":
            return self._dense_forward(batch, ctx)
        if self.fde:
            policy = self.require_policy()
            with torch.no_grad():
                augmented = policy(batch.images, random=True).to(batch.images.dtype)
        else:
            augmented = batch.images
        images = torch.cat([augmented, batch.images])
        labels = torch.cat([batch.labels, batch.labels])
        indices = torch.cat([batch.indices, batch.indices])
        return [View("main", images, labels, indices=indices)]

    def _dense_forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        """[f_DE(x) ‖ x] for detection / segmentation, targets warped with Â."""
        if self.fde:
            with torch.no_grad():
                aug = self.augment_dense(batch)
            if aug.objects:
                ctx.log("tst_dropped_objects", aug.dropped / aug.objects, aug.objects)
        else:
            aug = DenseAugmented(batch.images, batch.labels, batch.annotations)
        indices = torch.cat([batch.indices, batch.indices])
        if self.task == "detection":
            assert batch.annotations is not None and aug.annotations is not None
            images = [*aug.images, *batch.images]
            return [
                View(
                    "main", images, None, indices=indices, annotations=[*aug.annotations, *batch.annotations]
                )
            ]
        assert isinstance(aug.images, torch.Tensor) and batch.labels is not None and aug.labels is not None
        images = torch.cat([aug.images, batch.images])
        return [View("main", images, torch.cat([aug.labels, batch.labels]), indices=indices)]

    def augment_dense(self, batch: Batch, random: bool = True) -> DenseAugmented:
        """One random one-affine f_DE pass over a dense batch, with its targets (differentiable in θ)."""
        policy = self.require_policy()
        draw = policy.sample()
        if self.task == "detection":
            if batch.annotations is None or self.normalizer is None:
                raise DatakdError("tst: a detection batch without annotations, or used before setup()")
            return augment_detection(
                policy,
                list(batch.images),
                batch.annotations,
                self.normalizer,
                draw,
                random,
                self.min_visible,
                self.min_box_size,
            )
        if batch.labels is None or not isinstance(batch.images, torch.Tensor):
            raise DatakdError("tst: a segmentation batch needs N×C×H×W images and N×H×W label maps")
        return augment_segmentation(policy, batch.images, batch.labels, draw, random)

    # ------------------------------------------------------------------ Stage II (dense tasks)
    def dense_search_loss(
        self, batch: Batch, student: torch.nn.Module, teacher: torch.nn.Module, autocast: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage II's objective on one dense batch (`datakd.augmenters.tst.dense`), differentiable in θ."""
        aug = self.augment_dense(batch)
        if self.task == "detection":
            assert aug.annotations is not None and isinstance(aug.images, list)
            return detection_search_loss(
                student, teacher, aug.images, aug.annotations, self.alpha, self.beta, autocast
            )
        assert isinstance(aug.images, torch.Tensor) and aug.labels is not None
        with autocast():
            s_out, t_out = _seg_logits(student(aug.images)), _seg_logits(teacher(aug.images))
        loss = segmentation_search_loss(s_out.float(), t_out.float(), aug.labels, self.alpha, self.beta)
        return loss, {}

    # ------------------------------------------------------------------ policy log
    def policy_rows(
        self, epoch: int, call: int, pass_: int, step: int, loss: float | None, lr: float
    ) -> list[dict[str, Any]]:
        """14 rows (one per op) of the current p = σ(θ_p), apply probability and m = σ(θ_m)."""
        policy = self.require_policy()
        with torch.no_grad():
            p = policy.probabilities().tolist()
            p_apply = policy.apply_probabilities().tolist()
            m = policy.magnitudes().tolist()
        rows = []
        for i, op in enumerate(OPS):
            rows.append(
                {
                    "epoch": epoch,
                    "call": call,
                    "pass": pass_,
                    "search_step": step,
                    "op": op,
                    "p": p[i],
                    "p_apply": p_apply[i],
                    "m": m[i] if i < len(MAGNITUDE_OPS) else None,
                    "loss": loss,
                    "lr": lr,
                }
            )
        return rows


def _seg_logits(out: Any) -> torch.Tensor:
    """The decode head's N×K×H×W logits of a segmentation model's output."""
    return out["out"] if isinstance(out, dict) else out


def write_policy_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=POLICY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in POLICY_COLUMNS})
    atomic_write_text(buffer.getvalue(), path)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value
