"""The ``tst`` augmenter: holds θ (the learnable f_DE) and applies it every step (Stage III).

Every training step sees one view ``main`` = [f_DE(x) ‖ x] (2B images, labels [y ‖ y]); with batch-mean
CE/KD over the 2B images this is ½·loss on the augmented half + ½·loss on the original half, as in the
authors' code. f_DE runs without gradient here. θ_p and θ_m are parameters of this module (saved with the
run). Stage II, which searches θ, is the ``tst_search`` stage event (`datakd.events.tst_search`); its
settings (α, β, lr, momentum, clipping, ALRS) are options of this augmenter, where the recipes set them.
`policy_rows` describes the current θ for the policy log ``tst_policy.csv`` that the event writes.

``fde: false`` is the control that isolates f_DE: the same 2B batch [x ‖ x] and the same loss, with f_DE
replaced by the identity (no encoders, no Stage II), so TST − control measures what f_DE's images add.
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
from datakd.augmenters.tst.encoder_file import FitConfig, check_compatible, fill_of, load_encoders
from datakd.augmenters.tst.encoders import black_fill, make_encoders, set_fill
from datakd.augmenters.tst.ops import MAGNITUDE_OPS, OPS
from datakd.augmenters.tst.policy import RBD_MODES, TSTPolicy
from datakd.checkpoint import atomic_write_text
from datakd.data.loaders import Batch
from datakd.errors import ConfigError, DatakdError, choice_error

POLICY_FILE = "tst_policy.csv"
POLICY_COLUMNS = ("epoch", "call", "pass", "search_step", "op", "p", "p_apply", "m", "loss", "lr")


@register_augmenter("tst")
class TSTAugmenter(Augmenter):
    """TST (seed 000): learnable f_DE over 14 sub-policies; each step trains on [f_DE(x) ‖ x]."""

    view_names = ("main",)

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
    ) -> None:
        super().__init__()
        self.fde = fde
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
        if not self.fde:  # the control: [x ‖ x], nothing to load
            return
        channels = int(ctx.sample_images.shape[1])
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
