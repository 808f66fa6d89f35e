"""The one training loop. Teacher training is the same loop with no teacher and no distillation terms.

Each step: the augmenter turns the loader batch into views; every view goes through the student (with
the taps its loss terms read) and, when a term needs it, through the teacher (eval mode, no grad, the same
images); the terms' weighted values are summed (or their gradients combined when a term asks) and one
optimizer step is taken. Stage events change the run between epochs through the methods below, and every
such change is part of the checkpoint, so `resume` continues bit-identically on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from datakd.api import distributed as D
from datakd.api.context import StepContext, TermInputs, View
from datakd.augmenters.base import Augmenter
from datakd.checkpoint import (
    FORMAT_VERSION,
    atomic_save,
    atomic_write_text,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from datakd.config import RunConfig, dump_config
from datakd.data.base import DatasetBundle
from datakd.data.eval_loader import EvalLoader
from datakd.data.loaders import Batch, Normalizer
from datakd.engine.ddp import average_gradient_list, average_gradients, synchronise_batchnorm
from datakd.engine.fastpath import CompiledForward, FastPath, unwrap
from datakd.engine.metrics import EpochMeters, MetricsCSV, TensorBoardLog, write_json
from datakd.engine.optim import LRSchedule, build_optimizer, merge_section
from datakd.engine.preemption import Preempted, StopSignals
from datakd.engine.tasks import Task
from datakd.errors import DatakdError, NonFiniteLossError
from datakd.events.base import StageEvent
from datakd.faults import run_fault
from datakd.losses.base import LossTerm
from datakd.targets.base import TargetInputs, TargetTransform

# Under DDP, ranks agree on a preemption stop every this many steps (one scalar all-reduce).
STOP_CHECK_EVERY = 8


class Trainer:
    """Owns the models, methods, optimizer and run directory of one run; `fit()` trains it."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        device: torch.device,
        bundle: DatasetBundle,
        eval_split: str,
        loader: Any,
        eval_loader: EvalLoader,
        normalizer: Normalizer,
        student: nn.Module,
        teacher: nn.Module | None,
        teacher_source: dict[str, Any] | None,
        terms: list[LossTerm],
        augmenter: Augmenter,
        target_transform: TargetTransform | None,
        events: list[StageEvent],
        teacher_loader: Callable[[str, str | None], tuple[nn.Module, dict[str, Any]]],
        fast_path: FastPath | None = None,
        task: Task | None = None,
    ) -> None:
        self.cfg = cfg
        self.task = task or Task()
        self.run_dir = run_dir
        self.device = device
        self.bundle = bundle
        self.eval_split = eval_split
        self.loader = loader
        self.eval_loader = eval_loader
        self.normalizer = normalizer
        self.student_module = student  # the unwrapped model whose state_dict is saved
        self.student = student  # what forward passes use (DDP- and/or compile-wrapped)
        self.fast_path = fast_path or FastPath(False, False, "not given")
        self.teacher = self._compile_teacher(teacher)
        self.teacher_source = teacher_source
        self.terms = nn.ModuleList(terms)
        self.augmenter = augmenter
        self.target_transform = target_transform
        self.events = events
        self._teacher_loader = teacher_loader
        self.rank, self.world_size = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        self.total_epochs = cfg.total_epochs
        self.steps_per_epoch = len(loader)
        self.epoch = 0
        self.step = 0
        self.global_step = 0
        self.best_top1 = -math.inf
        self.best_epoch = 0
        self.teacher_metrics: dict[str, float] | None = None
        self.teacher_history: list[dict[str, Any]] = []  # earlier teachers (stage events can switch)
        self.wall_seconds = 0.0
        self.train_seconds = 0.0
        self.train_images = 0
        self.meters = EpochMeters()
        self.metrics = MetricsCSV(run_dir / "metrics.csv")
        self.tb: TensorBoardLog | None = None
        self.optim_cfg = cfg.optim
        self.schedule_cfg = cfg.schedule
        self.schedule_start = 0
        self.scaler = self._make_scaler()
        self._wrap_student()
        self.optimizer, self.schedule = self._make_optimizer()

    # ----------------------------------------------------------------- setup helpers
    def _amp_dtype(self) -> torch.dtype | None:
        if not self.cfg.engine.amp or self.device.type != "cuda":
            return None
        return torch.bfloat16

    def autocast(self) -> Any:
        dtype = self._amp_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _make_scaler(self) -> torch.amp.GradScaler | None:
        return None  # bf16 autocast needs no loss scaling; kept as a hook for fp16

    def _wrap_student(self) -> None:
        """DDP for the student (the teacher is replicated unwrapped, in eval mode); with sync_bn its batch
        norms see the global batch, so N processes train like one process with the same global batch."""
        model = self.student_module
        if not self.task.wraps_student:
            # Detectors run through their components (datakd/models/detection/forward.py), which DDP's
            # forward would not see: their gradients are all-reduced by hand in `_backward` instead.
            self.student = model
            return
        if self.world_size > 1:
            if self.cfg.engine.sync_bn:
                synchronise_batchnorm(model, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.fast_path.compile:
            model = CompiledForward(model, self.cfg.data.batch_size // self.world_size, grad=True)
        self.student = model

    def _compile_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        """The teacher's forward (no grad, eval mode) compiled too when the fast path compiles."""
        if teacher is None or not self.fast_path.compile:
            return teacher
        return CompiledForward(teacher, self.cfg.data.batch_size // D.world_size(), grad=False)

    def compile_seconds(self) -> float | None:
        """Wall time of the first compiled calls (student forward+backward graphs, teacher forward)."""
        times = [m.compile_seconds for m in (self.student, self.teacher) if isinstance(m, CompiledForward)]
        times = [t for t in times if t is not None]
        return sum(times) if times else None

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside the student (connectors, augmenter); averaged across ranks by hand."""
        params = [p for p in self.terms.parameters() if p.requires_grad]
        return params + [p for p in self.augmenter.joint_parameters() if p.requires_grad]

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = [(f"student.{n}", p) for n, p in self.student_module.named_parameters() if p.requires_grad]
        params += [(f"terms.{n}", p) for n, p in self.terms.named_parameters() if p.requires_grad]
        params += [(f"augmenter.{i}", p) for i, p in enumerate(self.augmenter.joint_parameters())]
        return params

    def _make_optimizer(self) -> tuple[torch.optim.Optimizer, LRSchedule]:
        scale = 1.0
        if self.optim_cfg.base_batch:
            scale = self.cfg.data.batch_size / self.optim_cfg.base_batch
        optimizer = build_optimizer(self.optim_cfg, self.trainable_named_parameters(), lr_scale=scale)
        schedule = LRSchedule(
            self.schedule_cfg,
            self.steps_per_epoch,
            self.total_epochs,
            base_lr=self.optim_cfg.lr * scale,
            start_epoch=self.schedule_start,
        )
        return optimizer, schedule

    # ----------------------------------------------------------------- API for stage events
    def scaled_epoch(self, epoch: float) -> int:
        """An epoch number given in recipe units, under the epoch-scaling rule (× schedule.scale)."""
        return round(epoch * self.cfg.schedule.scale)

    def term(self, name: str) -> LossTerm:
        for term in self.terms:
            if term.term_name == name:
                return term
        names = ", ".join(t.term_name for t in self.terms)
        raise DatakdError(f"no loss term named {name!r}; this run has: {names}")

    def loss_weight(self, name: str) -> float:
        return self.term(name).weight

    def set_loss_weight(self, name: str, weight: float) -> None:
        self.term(name).weight = float(weight)

    def switch_teacher(self, checkpoint: str, name: str | None = None) -> None:
        """Replace the teacher (any architecture) by the model stored in `checkpoint`."""
        if self.teacher_metrics is not None:
            self.teacher_history.append(
                {
                    **(self.teacher_source or {}),
                    self.task.metric: self.teacher_metrics[self.task.metric],
                    "until_epoch": self.epoch,
                }
            )
        teacher, self.teacher_source = self._teacher_loader(checkpoint, name)
        self.teacher = self._compile_teacher(teacher)
        self.teacher_metrics = None  # evaluated at the start of the next epoch

    def rebuild_optimizer(self, optim: dict[str, Any], schedule: dict[str, Any], start_epoch: int) -> None:
        """A fresh optimizer (momentum reset) and an LR schedule restarted at `start_epoch`."""
        self.optim_cfg = merge_section(self.cfg.optim, optim, "optim")
        self.schedule_cfg = merge_section(self.cfg.schedule, schedule, "schedule")
        self.schedule_start = start_epoch
        self.optimizer, self.schedule = self._make_optimizer()

    # ----------------------------------------------------------------- the step
    def _active_terms(self, view: View) -> list[LossTerm]:
        return [t for t in self.terms if view.name in t.views and t.weight != 0.0]

    def _soft_targets_fn(
        self, view: View, s_logits: torch.Tensor, t_logits: torch.Tensor | None
    ) -> Callable[[float], torch.Tensor] | None:
        transform = self.target_transform
        if transform is None or t_logits is None or view.name not in transform.views:
            return None
        cache: dict[float, torch.Tensor] = {}

        def targets(temperature: float) -> torch.Tensor:
            if temperature not in cache:
                with torch.no_grad():
                    cache[temperature] = transform(
                        TargetInputs(
                            view.images,
                            view.labels,
                            s_logits.detach().float(),
                            t_logits.float(),
                            temperature,
                            self.epoch,
                        )
                    ).detach()
                for key, value in transform.stats.items():
                    self.meters.add(f"target_{key}", value)
            return cache[temperature]

        return targets

    def _view_losses(self, view: View) -> dict[str, torch.Tensor]:
        terms = self._active_terms(view)
        if not terms:
            return {}
        s_taps = [tap for t in terms for tap in t.student_taps]
        t_taps = [tap for t in terms for tap in t.teacher_taps]
        needs_teacher = any(t.needs_teacher for t in terms)
        if needs_teacher and self.teacher is None:
            names = ", ".join(t.term_name for t in terms if t.needs_teacher)
            raise DatakdError(
                f"loss terms {names} need a teacher: use `datakd distill` with --teacher-checkpoint"
            )
        task = self.task
        with self.autocast():
            s_logits, s_feats, s_out = task.forward(self.student, view, s_taps)
            t_logits, t_feats, t_out = None, {}, {}
            if needs_teacher:
                if view.teacher_logits is not None and not t_taps:
                    t_logits = view.teacher_logits
                else:
                    with torch.no_grad():
                        t_logits, t_feats, t_out = task.forward(
                            self.teacher, view, t_taps, teacher=True, student_outputs=s_out
                        )
        if view.name == "main" and view.labels is not None and view.labels.dim() == 1:
            # top-1 on the augmented training images as trained on (EffDstl Fig. 8: train vs validation)
            hits = s_logits.detach().argmax(dim=1).eq(view.labels).float().mean()
            self.meters.add("train_top1", hits * 100, len(view.labels))
        inputs = TermInputs(
            view,
            None if s_logits is None else s_logits.float(),
            None if t_logits is None else t_logits.float(),
            s_feats,
            t_feats,
            self.epoch,
            self.step,
            self.global_step,
            self.steps_per_epoch,
            self.total_epochs,
            None if s_logits is None else self._soft_targets_fn(view, s_logits, t_logits),
            self.meters.add,
            student_outputs=s_out,
            teacher_outputs=t_out,
        )
        losses = {}
        for term in terms:
            value = term(inputs)
            losses[term.term_name] = value * view.weight if view.weight != 1.0 else value
        return losses

    def _backward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        weighted = {name: self.term(name).weight * value for name, value in losses.items()}
        total = sum(weighted.values())
        custom = [self.term(n) for n in weighted if self.term(n).custom_gradient]
        if not custom:
            total.backward()  # DDP averages the student's gradients during this backward
            if self.world_size > 1:
                unwrapped = [] if self.task.wraps_student else list(self.student_module.parameters())
                average_gradients([p for p in unwrapped if p.requires_grad] + self.extra_parameters())
            return total
        # Terms that combine gradients themselves need each part separately; parts are averaged across
        # ranks before combining (the student's forward ran under no_sync, see train_step).
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        rest_names = [n for n in weighted if not self.term(n).custom_gradient]
        rest_loss = sum(weighted[n] for n in rest_names) if rest_names else None
        rest = (
            torch.autograd.grad(rest_loss, params, retain_graph=True, allow_unused=True)
            if rest_loss is not None and rest_loss.requires_grad
            else [None] * len(params)
        )
        combined = average_gradient_list(params, list(rest))
        for i, term in enumerate(custom):
            last = i == len(custom) - 1
            own = torch.autograd.grad(
                weighted[term.term_name], params, retain_graph=not last, allow_unused=True
            )
            own = average_gradient_list(params, list(own))
            combined = [
                term.combine_gradient(p, g_own, g_rest, self.epoch)
                for p, g_own, g_rest in zip(params, own, combined)
            ]
        for p, g in zip(params, combined):
            p.grad = None if g is None else g.detach()
        return total

    def _check_finite(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        if torch.isfinite(total.detach()).item():
            return
        bad = next((n for n, v in losses.items() if not torch.isfinite(v.detach()).item()), "total")
        last = self.run_dir / "last.pt"
        kept = (
            f"the last good checkpoint {str(last)!r} is kept"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"loss term {bad!r} became {float(losses.get(bad, total).detach()):.4g} at epoch "
            f"{self.epoch + 1} step {self.step} (global step {self.global_step}); {kept}"
        )

    def train_step(self, batch: Batch) -> None:
        lr = self.schedule.apply(self.optimizer, self.global_step)
        ctx = StepContext(
            self.epoch,
            self.step,
            self.global_step,
            self.steps_per_epoch,
            self.total_epochs,
            self.student,
            self.teacher,
            self.meters,
            self.autocast,
        )
        views = self.augmenter(batch, ctx)
        custom = any(t.custom_gradient and t.weight != 0.0 for t in self.terms)
        sync_off = self.world_size > 1 and custom and hasattr(self.student, "no_sync")
        with self.student.no_sync() if sync_off else contextlib.nullcontext():
            losses: dict[str, torch.Tensor] = {}
            for view in views:
                for name, value in self._view_losses(view).items():
                    losses[name] = losses[name] + value if name in losses else value
            if not losses:
                raise DatakdError(
                    "no loss term applies to any view of this step (check loss.*.views and weights)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            total = self._backward(losses)
        if self.cfg.engine.nan_guard:
            self._check_finite(total, losses)
        if self.cfg.engine.grad_clip_norm:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.cfg.engine.grad_clip_norm)
        self.optimizer.step()
        n = len(batch)
        for name, value in losses.items():
            self.meters.add(f"loss_{name}", value, n)
        self.meters.add("loss_total", total, n)
        self.meters.add("lr", lr)

    # ----------------------------------------------------------------- epochs
    def _teacher_eval(self) -> None:
        if self.teacher is None or self.teacher_metrics is not None:
            return
        self.teacher_metrics = self.task.evaluate(
            unwrap(self.teacher),
            self.eval_loader,
            self.autocast,
            D.all_reduce_sum,
            progress=self._progress(),
            desc="teacher eval",
        )
        self._say(f"teacher {self.eval_split} {self._metric_text(self.teacher_metrics[self.task.metric])}")

    def _progress(self) -> bool:
        return not self.cfg.quiet and self.is_main

    def _say(self, text: str) -> None:
        if self._progress():
            tqdm.write(text)

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the last epoch (from wherever a resume left off) and write summary.json.

        With `until_epoch`, stop once that many epochs are done (a driver such as population-based
        search advances a run a few epochs at a time; calling `fit` again continues it).
        """
        stop = self.total_epochs if until_epoch is None else min(until_epoch, self.total_epochs)
        started = time.perf_counter()
        wall_before = self.wall_seconds
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dump_config(self.cfg), self.run_dir / "config.yaml")
            self.tb = TensorBoardLog(self.run_dir / "tb", self.cfg.engine.tensorboard)
        for event in self.events:
            event.on_train_start(self)
        self._teacher_eval()
        self._last_checkpoint_time = time.monotonic()
        try:
            with StopSignals(self.cfg.engine.preempt_signals) as self._signals:
                while self.epoch < stop:
                    self._run_epoch(started, wall_before)
                    reason = self._stop_requested() if self.epoch < stop else None
                    if reason is not None:  # the epoch-end last.pt is written
                        raise Preempted(reason, self.run_dir, self.epoch, self.step, self.global_step)
        except Preempted as preempted:
            self.wall_seconds = wall_before + (time.perf_counter() - started)
            if self.is_main:
                write_json(self.summary() | preempted.record(), self.run_dir / "summary.json")
            raise
        except Exception as exc:  # out of memory, a data file gone: one line (datakd.faults)
            fault = run_fault(self, exc)
            if fault is None:
                raise
            raise fault from None
        finally:
            self._signals = None
            if self.tb is not None:
                self.tb.close()
        self.wall_seconds = wall_before + (time.perf_counter() - started)
        summary = self.summary() | {"status": "finished" if self.epoch >= self.total_epochs else "paused"}
        if self.is_main:
            write_json(summary, self.run_dir / "summary.json")
        return summary

    # ----------------------------------------------------------------- preemption and timed checkpoints
    def _stop_requested(self) -> str | None:
        """The preemption signal this process (or, under DDP, any rank) received, else None.

        Under DDP the ranks agree by an all-reduce every `STOP_CHECK_EVERY` steps (and at epoch ends), so
        they all stop after the same step.
        """
        signals = getattr(self, "_signals", None)
        received = None if signals is None else signals.received
        if self.world_size == 1:
            return received
        flag = torch.tensor([0.0 if received is None else 1.0], device=self.device)
        if D.all_reduce_sum(flag).item() == 0:
            return None
        return received or "a preemption signal on another rank"

    def _checkpoint_due(self) -> bool:
        """True when engine.checkpoint_every_minutes have passed since the last checkpoint."""
        minutes = self.cfg.engine.checkpoint_every_minutes
        last = getattr(self, "_last_checkpoint_time", None)
        return bool(minutes) and last is not None and time.monotonic() - last >= minutes * 60

    def _run_epoch(self, started: float, wall_before: float) -> None:
        epoch = self.epoch
        if self.step == 0:
            self.meters = EpochMeters()
            for event in self.events:
                event.on_epoch_start(self, epoch)
            self.augmenter.on_epoch_start(epoch, self)
            for term in self.terms:
                term.on_epoch_start(epoch)
            self._teacher_eval()  # a teacher switched in by an event is evaluated once, here
            self._epoch_train_seconds = 0.0
            self._epoch_images = 0
        self.student.train()
        if self.teacher is not None:
            self.teacher.eval()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {epoch + 1}/{self.total_epochs}",
            leave=False,
            disable=not self._progress(),
            dynamic_ncols=True,
        )
        tick = time.perf_counter()
        every = self.cfg.engine.checkpoint_every_iters
        for batch in self.loader.epoch(epoch, self.step):
            for event in self.events:
                event.on_step_start(self, epoch, self.step)
            self.train_step(batch)
            self.step += 1
            self.global_step += 1
            self._epoch_images += len(batch) * self.world_size
            bar.update(1)
            check_stop = self.world_size == 1 or self.global_step % STOP_CHECK_EVERY == 0
            reason = self._stop_requested() if check_stop and self.step < self.steps_per_epoch else None
            due = (every and self.global_step % every == 0) or self._checkpoint_due() or reason is not None
            if due and self.step < self.steps_per_epoch:
                self._sync()
                self._epoch_train_seconds += time.perf_counter() - tick
                self.wall_seconds = wall_before + (time.perf_counter() - started)
                self.save_checkpoint()
                tick = time.perf_counter()
            if reason is not None:
                bar.close()
                raise Preempted(reason, self.run_dir, self.epoch, self.step, self.global_step)
        bar.close()
        self._sync()
        self._epoch_train_seconds += time.perf_counter() - tick
        self.train_seconds += self._epoch_train_seconds
        self.train_images += self._epoch_images
        row = self._epoch_row(epoch)
        for event in self.events:
            event.on_epoch_end(self, epoch)
        self.epoch += 1
        self.step = 0
        self.wall_seconds = wall_before + (time.perf_counter() - started)
        if self.is_main:
            self.metrics.append(row)
            if self.tb is not None:
                self.tb.scalars(row, epoch + 1)
        self.save_checkpoint(best=self.best_epoch == epoch + 1)
        self._say(self._describe(row))

    def _epoch_row(self, epoch: int) -> dict[str, Any]:
        means = self.meters.means(D.all_reduce_sum if self.world_size > 1 else None)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": means.pop("lr", float("nan"))}
        row.update({k: v for k, v in sorted(means.items()) if k.startswith("loss_")})
        evaluate_now = (epoch + 1) % max(self.cfg.engine.eval_every, 1) == 0 or epoch + 1 == self.total_epochs
        if evaluate_now:
            result = self.task.evaluate(
                self.student_module,
                self.eval_loader,
                self.autocast,
                D.all_reduce_sum,
                progress=self._progress(),
                desc="eval",
            )
            for key, value in result.items():
                row[f"{self.eval_split}_{key}"] = value
            # best.pt follows the task's headline metric (top-1, mAP or mIoU); the name is historical
            if result[self.task.metric] > self.best_top1:
                self.best_top1, self.best_epoch = result[self.task.metric], epoch + 1
        row["images_per_sec"] = self._epoch_images / max(self._epoch_train_seconds, 1e-9)
        row["epoch_seconds"] = self._epoch_train_seconds
        row.update({k: v for k, v in sorted(means.items()) if not k.startswith("loss_")})
        return row

    def _describe(self, row: dict[str, Any]) -> str:
        acc = row.get(f"{self.eval_split}_{self.task.metric}")
        acc_text = f"{self.eval_split} {self._metric_text(acc)}  " if acc is not None else ""
        return (
            f"epoch {row['epoch']}/{self.total_epochs}  loss {row.get('loss_total', float('nan')):.4f}  "
            f"{acc_text}{row['images_per_sec']:.0f} img/s"
        )

    def _metric_text(self, value: float) -> str:
        if self.task.metric == "top1":
            return f"top-1 {value:.2f}%"
        return f"{self.task.metric} {value:.2f}"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ----------------------------------------------------------------- results
    def summary(self) -> dict[str, Any]:
        rows = self.metrics.rows
        key = f"{self.eval_split}_{self.task.metric}"
        last = next((r for r in reversed(rows) if key in r), {})
        best = max((r for r in rows if key in r), key=lambda r: r[key], default={})
        devices = self.world_size if self.device.type == "cuda" else 1
        return {
            "name": self.cfg.name,
            "dataset": self.cfg.data.dataset,
            "eval_split": self.eval_split,
            "student": self.cfg.student.name,
            "teacher": None if self.teacher_source is None else self.teacher_source.get("name"),
            "seed": self.cfg.seed,
            "epochs": self.epoch,
            "top1_last": last.get(f"{self.eval_split}_top1"),
            "top5_last": last.get(f"{self.eval_split}_top5"),
            "top1_best": best.get(f"{self.eval_split}_top1"),
            "top5_best": best.get(f"{self.eval_split}_top5"),
            "best_epoch": best.get("epoch"),
            "teacher_top1": None if self.teacher_metrics is None else self.teacher_metrics.get("top1"),
            "earlier_teachers": self.teacher_history,
            "images_per_sec": self.train_images / max(self.train_seconds, 1e-9),
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "device": str(self.device),
            "world_size": self.world_size,
            "channels_last": self.fast_path.channels_last,
            "compile": self.fast_path.compile,
            "fast_path": self.fast_path.reason,
            "compile_seconds": self.compile_seconds(),
            "device_hours": self.wall_seconds * devices / 3600.0,
            "student_params": sum(p.numel() for p in self.student_module.parameters()),
            "extra_params": sum(p.numel() for p in self.terms.parameters())
            + sum(p.numel() for p in self.augmenter.parameters()),
        } | self._task_summary(last, best)

    def _task_summary(self, last: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        """Dense tasks: task, headline metric, last/best mAP or mIoU (classification adds nothing)."""
        fields = self.task.summary(last, best, self.eval_split)
        if not fields:
            return {}
        metric = self.task.metric
        teacher = None if self.teacher_metrics is None else self.teacher_metrics.get(metric)
        return {"task": self.task.name, **fields, f"teacher_{metric}": teacher}

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.student_module.state_dict(),
            "model_name": self.cfg.student.name,
            "model_kwargs": dict(self.cfg.student.kwargs),
            "num_classes": self.bundle.num_classes,
            "dataset": self.cfg.data.dataset,
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optim_spec": {
                "optim": _plain(self.optim_cfg),
                "schedule": _plain(self.schedule_cfg),
                "start_epoch": self.schedule_start,
            },
            "terms": self.terms.state_dict(),
            "loss_weights": {t.term_name: t.weight for t in self.terms},
            "augmenter": self.augmenter.state_dict(),
            "augmenter_extra": self.augmenter.extra_state(),
            "target_transform": None if self.target_transform is None else self.target_transform.state_dict(),
            "events": [e.state_dict() for e in self.events],
            "teacher_source": self.teacher_source,
            "teacher_metrics": self.teacher_metrics,
            "teacher_history": self.teacher_history,
            "rng": capture_rng(),
            "meters": self.meters.state_dict(),
            "epoch_progress": {
                "train_seconds": getattr(self, "_epoch_train_seconds", 0.0),
                "images": getattr(self, "_epoch_images", 0),
            },
            "best": {"top1": self.best_top1, "epoch": self.best_epoch},
            "history": self.metrics.rows,
            "totals": {
                "wall_seconds": self.wall_seconds,
                "train_seconds": self.train_seconds,
                "train_images": self.train_images,
            },
        }

    def save_checkpoint(self, best: bool = False) -> None:
        self._last_checkpoint_time = time.monotonic()
        if not self.is_main:
            return
        state = self.state_dict()
        if best and self.cfg.engine.save_best:  # best.pt first: if last.pt then fails, --resume redoes it
            atomic_save(state, self.run_dir / "best.pt")
        atomic_save(state, self.run_dir / "last.pt")

    def load_state(self, path: Path) -> None:
        """Continue from a checkpoint written by `save_checkpoint` (see the module docstring)."""
        state = load_checkpoint(path)
        if "optimizer" not in state or "rng" not in state:
            raise DatakdError(f"{str(path)!r} is a model checkpoint, not a resumable run state")
        self.student_module.load_state_dict(state["model"])
        source = state.get("teacher_source")
        if source and source != self.teacher_source:
            self.switch_teacher(source["checkpoint"], source.get("name"))
        self.terms.load_state_dict(state["terms"])
        for name, weight in state["loss_weights"].items():
            self.set_loss_weight(name, weight)
        self.augmenter.load_state_dict(state["augmenter"])
        self.augmenter.load_extra_state(state.get("augmenter_extra", {}))
        if self.target_transform is not None and state.get("target_transform") is not None:
            self.target_transform.load_state_dict(state["target_transform"])
        for event, event_state in zip(self.events, state["events"]):
            event.load_state_dict(event_state)
        spec = state["optim_spec"]
        self.rebuild_optimizer(spec["optim"], spec["schedule"], spec["start_epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.teacher_metrics = state.get("teacher_metrics")
        self.teacher_history = list(state.get("teacher_history", []))
        self.meters.load_state_dict(state["meters"], self.device)
        progress = state.get("epoch_progress", {})
        self._epoch_train_seconds = progress.get("train_seconds", 0.0)
        self._epoch_images = progress.get("images", 0)
        self.best_top1, self.best_epoch = state["best"]["top1"], state["best"]["epoch"]
        self.metrics = MetricsCSV(
            self.run_dir / "metrics.csv", [r for r in state["history"] if r["epoch"] <= self.epoch]
        )
        if self.is_main:
            self.metrics.write()  # drop rows an interrupted run wrote after this checkpoint
        totals = state["totals"]
        self.wall_seconds = totals["wall_seconds"]
        self.train_seconds = totals["train_seconds"]
        self.train_images = totals["train_images"]
        restore_rng(state["rng"])


def _plain(section: Any) -> dict[str, Any]:
    import dataclasses

    values = dataclasses.asdict(section)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
