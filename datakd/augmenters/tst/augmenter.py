"""The ``tst`` augmenter: Stage III views from f_DE, and the Stage II search the ``tst_search`` event runs.

Every training step sees one view ``main`` = [f_DE(x) ‖ x] (2B images, labels [y ‖ y]); with batch-mean
CE/KD over the 2B images this is ½·loss on the augmented half + ½·loss on the original half, as in the
authors' code. f_DE runs without gradient here. θ_p and θ_m are parameters of this module (saved with the
run); the progress of a Stage II call (its optimizer, ALRS and loss sums) is `extra_state`, so a run killed
during Stage II resumes inside it bit-identically. The probabilities and magnitudes are written to
``tst_policy.csv`` in the run directory after every Stage II pass.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from datakd.augmenters.base import Augmenter, register_augmenter
from datakd.augmenters.tst.encoders import make_encoders
from datakd.augmenters.tst.fitting import FitConfig, check_compatible, load_encoders
from datakd.augmenters.tst.ops import MAGNITUDE_OPS, OPS
from datakd.augmenters.tst.policy import RBD_MODES, TSTPolicy
from datakd.augmenters.tst.search import ALRS, frozen_student, parameter_list, search_step
from datakd.checkpoint import atomic_write_text
from datakd.data.loaders import Batch
from datakd.engine import distributed as D
from datakd.engine.context import SetupContext, StepContext, View
from datakd.errors import ConfigError, DatakdError, NonFiniteLossError, choice_error

POLICY_FILE = "tst_policy.csv"
POLICY_COLUMNS = ("epoch", "call", "pass", "search_step", "op", "p", "p_apply", "m", "loss", "lr")
# Loader "epoch" keys of Stage II passes, far from the training epochs so their batch orders differ.
SEARCH_KEY = 10**9


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
    ) -> None:
        super().__init__()
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
        if prior and needs_encoders and not encoders:
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
        self.history: list[dict[str, Any]] = []
        self.calls = 0
        self.search_steps = 0  # Stage II iterations so far (the x axis of the policy plot)
        self._search: dict[str, Any] | None = None  # progress of a running Stage II call
        self._live: tuple[torch.optim.Optimizer, ALRS] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: SetupContext) -> None:
        channels = int(ctx.sample_images.shape[1])
        encoders = make_encoders(channels)
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
        encoders.requires_grad_(not self.freeze_encoders)
        self.policy = TSTPolicy(
            encoders, ctx.normalizer, self.num_ops, self.rbd_mode, self.temperature, self.ops
        )

    def _require_policy(self) -> TSTPolicy:
        if self.policy is None:
            raise DatakdError("the tst augmenter was used before setup()")
        return self.policy

    # ------------------------------------------------------------------ Stage III
    def forward(self, batch: Batch, ctx: StepContext) -> list[View]:
        policy = self._require_policy()
        with torch.no_grad():
            augmented = policy(batch.images, random=True).to(batch.images.dtype)
        images = torch.cat([augmented, batch.images])
        labels = torch.cat([batch.labels, batch.labels])
        indices = torch.cat([batch.indices, batch.indices])
        return [View("main", images, labels, indices=indices)]

    # ------------------------------------------------------------------ Stage II
    def search(self, trainer: Any, epoch: int, passes: int, max_steps: int | None = None) -> None:
        """Run (or resume) the Stage II call that starts `epoch`: `passes` passes over the training loader,
        each capped at `max_steps` batches."""
        policy = self._require_policy()
        if trainer.teacher is None:
            raise DatakdError("TST Stage II needs a teacher: run with `datakd distill`")
        device = policy.prob_logits.device
        if self._search is None or self._search["epoch"] != epoch:
            self._search = {
                "epoch": epoch,
                "pass": 0,
                "step": 0,
                "loss_sum": torch.zeros((), dtype=torch.float64),
                "count": torch.zeros((), dtype=torch.float64),
                "pass_losses": [],
                "optimizer": None,
                "alrs": None,
            }
            self._record(trainer, epoch, 0, None, self.lr)
        state = self._search
        state["loss_sum"], state["count"] = state["loss_sum"].to(device), state["count"].to(device)
        optimizer = torch.optim.SGD(
            parameter_list(policy, not self.freeze_encoders), lr=self.lr, momentum=self.momentum
        )
        alrs = ALRS(optimizer, **self.alrs_options)
        if state["optimizer"] is not None:  # resuming inside this call
            optimizer.load_state_dict(state["optimizer"])
            alrs.load_state_dict(state["alrs"])
        self._live = (optimizer, alrs)
        steps = len(trainer.loader) if max_steps is None else min(max_steps, len(trainer.loader))
        with frozen_student(trainer.student_module) as student:
            while state["pass"] < passes:
                self._run_pass(trainer, policy, student, optimizer, steps)
                totals = D.all_reduce_sum(torch.stack([state["loss_sum"], state["count"]]))
                mean = float(totals[0] / totals[1].clamp_min(1))
                alrs.step(mean)
                state["pass_losses"].append(mean)
                state["pass"] += 1
                state["step"] = 0
                state["loss_sum"].zero_()
                state["count"].zero_()
                self._record(trainer, epoch, state["pass"], mean, optimizer.param_groups[0]["lr"])
        self.calls += 1
        trainer.meters.add("tst_search_loss", sum(state["pass_losses"]) / max(len(state["pass_losses"]), 1))
        trainer.meters.add("tst_search_lr", optimizer.param_groups[0]["lr"])
        self._search, self._live = None, None

    def _run_pass(
        self,
        trainer: Any,
        policy: TSTPolicy,
        student: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        steps: int,
    ) -> None:
        """The rest of the current pass, from `state["step"]`, checkpointing every N iterations."""
        state = self._search
        assert state is not None
        epoch, k = state["epoch"], state["pass"]
        every = trainer.cfg.engine.checkpoint_every_iters
        for batch in trainer.loader.epoch(SEARCH_KEY + epoch * 1000 + k, state["step"]):
            if state["step"] >= steps:
                break
            loss = search_step(
                policy,
                student,
                trainer.teacher,
                batch.images,
                batch.labels,
                optimizer,
                self.alpha,
                self.beta,
                self.clip_grad_norm,
                trainer.autocast,
            )
            if trainer.cfg.engine.nan_guard and not torch.isfinite(loss).item():
                raise NonFiniteLossError(
                    f"TST Stage II loss became {float(loss):.4g} at epoch {epoch + 1} pass {k + 1} "
                    f"step {state['step']} (θ or unfrozen/unfitted encoders diverged); {_kept(trainer)}"
                )
            state["loss_sum"] += loss.double() * len(batch)
            state["count"] += len(batch)
            state["step"] += 1
            self.search_steps += 1
            if every and state["step"] % every == 0 and state["step"] < steps:
                trainer.save_checkpoint()  # extra_state() carries this call's progress

    # ------------------------------------------------------------------ policy log
    def policy_rows(
        self, epoch: int, call: int, pass_: int, step: int, loss: float | None, lr: float
    ) -> list[dict[str, Any]]:
        """14 rows (one per op) of the current p = σ(θ_p), apply probability and m = σ(θ_m)."""
        policy = self._require_policy()
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

    def _record(self, trainer: Any, epoch: int, pass_: int, loss: float | None, lr: float) -> None:
        self.history += self.policy_rows(epoch, self.calls + 1, pass_, self.search_steps, loss, lr)
        if trainer.is_main:
            write_policy_csv(self.history, Path(trainer.run_dir) / POLICY_FILE)

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        search = None
        if self._search is not None and self._live is not None:
            optimizer, alrs = self._live
            search = {
                **self._search,
                "loss_sum": self._search["loss_sum"].cpu(),
                "count": self._search["count"].cpu(),
                "pass_losses": list(self._search["pass_losses"]),
                "optimizer": optimizer.state_dict(),
                "alrs": alrs.state_dict(),
            }
        return {
            "history": [dict(r) for r in self.history],
            "calls": self.calls,
            "search_steps": self.search_steps,
            "search": search,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.calls = int(state.get("calls", 0))
        self.search_steps = int(state.get("search_steps", 0))
        self._search = state.get("search")
        self._live = None


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


def _kept(trainer: Any) -> str:
    last = Path(trainer.run_dir) / "last.pt"
    return (
        f"the last good checkpoint {str(last)!r} is kept"
        if last.exists()
        else "no checkpoint was written yet"
    )
