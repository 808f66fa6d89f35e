"""TST Stage II as a stage event: before the given epochs, search the θ_p, θ_m that the tst augmenter holds.

The split of work: the ``tst`` augmenter owns θ (its `TSTPolicy`) and applies it every step (Stage III);
this event drives Stage II. At the start of each epoch in `at` it runs `epochs` passes over the training
loader, each step one `search_step` (α·CE(teacher(x̂)) + β·(−log(1 − p_S(y|x̂)))) on a fresh SGD over θ
with ALRS decaying its lr after each pass (detection and segmentation: the augmenter's `dense_search_loss`,
the bounded Eq. 2 form of `datakd.augmenters.tst.dense`). The Stage II settings (α, β, lr, momentum,
clipping, ALRS) stay options of the augmenter, where the recipes set them.

Everything a call has done so far (its pass and step, SGD and ALRS state, loss sums) and the policy log
are this event's state, saved in every checkpoint; with `engine.checkpoint_every_iters` a checkpoint is
also written every N Stage II iterations, so a run killed inside Stage II resumes inside it
bit-identically. The probabilities and magnitudes go to ``tst_policy.csv`` after every pass.

How long a pass is (the rule, `pass_images`): the authors' Stage II pass is one epoch over the student's
training data, and their students train on the full split: ResNet-110 → ResNet-20 on CIFAR-100 searches 782
steps per pass, one training epoch of 782 steps. A student trained on a subset has far shorter epochs (a
2,000-image subset at batch 128: 16 steps), so θ would get a few dozen SGD steps in all. ``pass_images: N``
keeps the authors' proportion of search to training measured on the full split: a pass draws N images, i.e.
⌈N / batch⌉ steps (the subset's loader epochs chained), with N = the full training split (Fashion-MNIST
60,000: 469 steps at batch 128). Unset, a pass is one epoch of the run's own loader (the default).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from datakd.api import distributed as D
from datakd.api.run import RunControl
from datakd.augmenters.tst.augmenter import POLICY_FILE, TSTAugmenter, write_policy_csv
from datakd.augmenters.tst.policy import TSTPolicy
from datakd.augmenters.tst.search import ALRS, frozen_student, parameter_list, search_step, search_update
from datakd.errors import ConfigError, DatakdError, NonFiniteLossError
from datakd.events.base import StageEvent, epoch_list, register_event

# Loader "epoch" keys of Stage II passes, far from the training epochs so their batch orders differ.
SEARCH_KEY = 10**9


@register_event("tst_search")
class TSTSearch(StageEvent):
    """TST Stage II: before epochs `at` (CIFAR 30, 90), `epochs` passes tuning θ_p, θ_m of the tst augmenter.

    `at` follows the epoch-scaling rule (× schedule.scale); `epochs` is the number of passes over the
    training loader per call (paper: 1; the authors' configs: 1/5/10/30 per pair, see the recipes);
    `max_steps` caps the batches of each pass (quick runs); `pass_images` sets a pass's length in images
    (the rule in the module docstring).
    """

    def __init__(
        self,
        at: int | list[int] = (30, 90),
        epochs: int = 1,
        max_steps: int | None = None,
        pass_images: int | None = None,
    ) -> None:
        self.at = epoch_list(list(at) if isinstance(at, tuple) else at)
        if any(a < 0 for a in self.at):
            raise ConfigError(f"tst_search.at must list epochs >= 0, got {self.at}")
        if not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"tst_search.epochs must be an integer >= 0, got {epochs!r}")
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"tst_search.max_steps must be at least 1, got {max_steps}")
        if pass_images is not None and (not isinstance(pass_images, int) or pass_images < 1):
            raise ConfigError(f"tst_search.pass_images must be a positive integer, got {pass_images!r}")
        self.epochs = epochs
        self.pass_images = pass_images
        self.max_steps = max_steps
        self.history: list[dict[str, Any]] = []  # the policy log (tst_policy.csv rows)
        self.calls = 0
        self.search_steps = 0  # Stage II iterations so far (the x axis of the policy plot)
        self._search: dict[str, Any] | None = None  # progress of a running call
        self._live: tuple[torch.optim.Optimizer, ALRS] | None = None

    def on_train_start(self, trainer: RunControl) -> None:
        if not isinstance(trainer.augmenter, TSTAugmenter):
            raise ConfigError(
                f"event tst_search needs augmenter tst, but this run uses "
                f"{trainer.cfg.augmenter.get('name')!r}"
            )
        if trainer.teacher is None:
            raise ConfigError("event tst_search needs a teacher: run with `datakd distill`")
        if not trainer.augmenter.fde:
            raise ConfigError("event tst_search searches f_DE, but this run's tst augmenter has fde: false")

    def pass_steps(self, loader_steps: int, batch_size: int) -> int:
        """Steps of one pass: one loader epoch, or ⌈pass_images / batch⌉ (the rule above)."""
        if self.pass_images is None:
            return loader_steps
        return max(1, math.ceil(self.pass_images / batch_size))

    def on_epoch_start(self, trainer: RunControl, epoch: int) -> None:
        if self.epochs and epoch in {trainer.scaled_epoch(a) for a in self.at}:
            self.search(trainer, epoch, self.epochs, self.max_steps)

    # ------------------------------------------------------------------ Stage II
    def search(self, trainer: RunControl, epoch: int, passes: int, max_steps: int | None = None) -> None:
        """Run (or resume) the Stage II call that starts `epoch`: `passes` passes over the training loader,
        each capped at `max_steps` batches."""
        augmenter = trainer.augmenter
        assert isinstance(augmenter, TSTAugmenter)
        policy = augmenter.require_policy()
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
            self._record(trainer, augmenter, epoch, 0, None, augmenter.lr)
        state = self._search
        state["loss_sum"], state["count"] = state["loss_sum"].to(device), state["count"].to(device)
        optimizer = torch.optim.SGD(
            parameter_list(policy, not augmenter.freeze_encoders),
            lr=augmenter.lr,
            momentum=augmenter.momentum,
        )
        alrs = ALRS(optimizer, **augmenter.alrs_options)
        if state["optimizer"] is not None:  # resuming inside this call
            optimizer.load_state_dict(state["optimizer"])
            alrs.load_state_dict(state["alrs"])
        self._live = (optimizer, alrs)
        steps = self.pass_steps(len(trainer.loader), trainer.cfg.data.batch_size)
        steps = steps if max_steps is None else min(max_steps, steps)
        with frozen_student(trainer.student_module) as student:
            while state["pass"] < passes:
                self._run_pass(trainer, augmenter, policy, student, optimizer, steps)
                totals = D.all_reduce_sum(torch.stack([state["loss_sum"], state["count"]]))
                mean = float(totals[0] / totals[1].clamp_min(1))
                alrs.step(mean)
                state["pass_losses"].append(mean)
                state["pass"] += 1
                state["step"] = 0
                state["loss_sum"].zero_()
                state["count"].zero_()
                self._record(trainer, augmenter, epoch, state["pass"], mean, optimizer.param_groups[0]["lr"])
        self.calls += 1
        trainer.meters.add("tst_search_loss", sum(state["pass_losses"]) / max(len(state["pass_losses"]), 1))
        trainer.meters.add("tst_search_lr", optimizer.param_groups[0]["lr"])
        self._search, self._live = None, None

    def _run_pass(
        self,
        trainer: RunControl,
        augmenter: TSTAugmenter,
        policy: TSTPolicy,
        student: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        steps: int,
    ) -> None:
        """The rest of the current pass, from `state["step"]`, checkpointing every N iterations."""
        state = self._search
        assert state is not None and trainer.teacher is not None
        epoch, k = state["epoch"], state["pass"]
        every = trainer.cfg.engine.checkpoint_every_iters
        for batch in self._batches(trainer, epoch, k, state["step"]):
            if state["step"] >= steps:
                break
            if augmenter.task == "classification":
                loss = search_step(
                    policy,
                    student,
                    trainer.teacher,
                    batch.images,
                    batch.labels,
                    optimizer,
                    augmenter.alpha,
                    augmenter.beta,
                    augmenter.clip_grad_norm,
                    trainer.autocast,
                )
            else:  # detection / segmentation: the task's objective (datakd.augmenters.tst.dense)
                objective, parts = augmenter.dense_search_loss(
                    batch, student, trainer.teacher, trainer.autocast
                )
                search_update(objective, optimizer, augmenter.clip_grad_norm)
                loss = objective.detach()
                for name, value in parts.items():
                    trainer.meters.add(f"tst_search_{name}", value)
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
                trainer.save_checkpoint()  # state_dict() carries this call's progress

    @staticmethod
    def _batches(trainer: RunControl, epoch: int, k: int, start: int) -> Iterator[Any]:
        """Pass `k`'s batches from step `start` on: loader epochs chained, each with its own order (the
        first has the key a one-epoch pass always had, so a pass of one epoch is unchanged)."""
        per_epoch = len(trainer.loader)
        chunk = start // per_epoch
        while True:
            key = SEARCH_KEY + epoch * 1000 + k + chunk * 10**7
            yield from trainer.loader.epoch(
                key, start - chunk * per_epoch if chunk == start // per_epoch else 0
            )
            chunk += 1

    def _record(
        self,
        trainer: RunControl,
        augmenter: TSTAugmenter,
        epoch: int,
        pass_: int,
        loss: float | None,
        lr: float,
    ) -> None:
        self.history += augmenter.policy_rows(epoch, self.calls + 1, pass_, self.search_steps, loss, lr)
        if trainer.is_main:
            write_policy_csv(self.history, Path(trainer.run_dir) / POLICY_FILE)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.calls = int(state.get("calls", 0))
        self.search_steps = int(state.get("search_steps", 0))
        self._search = state.get("search")
        self._live = None


def _kept(trainer: RunControl) -> str:
    last = Path(trainer.run_dir) / "last.pt"
    return (
        f"the last good checkpoint {str(last)!r} is kept"
        if last.exists()
        else "no checkpoint was written yet"
    )
