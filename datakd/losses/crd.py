"""Contrastive representation distillation (Tian et al. ICLR 2020) with a memory bank or a bounded queue.

Both penultimate features go through a linear embedding + L2 normalisation (128-d). Each side is an
anchor against the other side's memory: the student embedding is scored against one positive and K
negatives from the *teacher* memory, and the teacher embedding against the *student* memory; NCE with
τ = 0.07 turns the scores into a loss (`relations.nce_contrast_loss`).

Memory (``memory:``):

* ``bank`` (CRD's original): one N×128 buffer per side, one row per training image, updated after each
  step with momentum 0.5 at the batch's dataset indices (``view.indices``) and re-normalised. The
  positive is the bank row of the same image (``positive: exact``) or of a random image of the same
  class (``positive: relax``); K = ``nce_k`` negatives are drawn per anchor, by default from other
  classes (``negatives: other_class``, as RepDistiller's CIFAR dataset does) or from all images
  (``negatives: any``). Memory grows with the dataset: 2·N·128 floats (1.3 GB for ImageNet).
* ``queue``: a FIFO of the last ``queue_size`` embeddings per side (and their labels), so memory is
  bounded. The positive is the other side's current embedding (detached, like a bank row), and every
  queue entry is a negative (same-class entries masked out with ``negatives: other_class``). No dataset
  indices are needed, so mixed views work.

The normalising constant Z of CRD's P = e^{s/τ}/Z is fixed at the first step from the mean score, as in
RepDistiller; it is a buffer, like the memory, so it is saved with the run. Negatives are drawn with the
torch RNG of the memory's device, which the checkpoint restores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from datakd.api import distributed as D
from datakd.api.context import SetupContext, TermInputs
from datakd.errors import DatakdError
from datakd.losses import relations as R
from datakd.losses.base import register_loss
from datakd.losses.feature_connectors import LinearEmbed, flat_dim
from datakd.losses.feature_taps import PairedFeatureTerm

MEMORIES = ("bank", "queue")
POSITIVES = ("exact", "relax")
NEGATIVES = ("other_class", "any")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DatakdError(f"crd.{option} {value!r} is not one of {', '.join(choices)}")


def _random_memory(rows: int, dim: int) -> torch.Tensor:
    # RepDistiller's initialisation: uniform in ±sqrt(3/dim), so rows have unit norm in expectation.
    bound = 1.0 / math.sqrt(dim / 3.0)
    return torch.rand(rows, dim).mul_(2 * bound).sub_(bound)


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all ranks (identity without torch.distributed), so memories stay equal.

    Every rank contributes the same number of rows (the distributed loaders drop the last partial batch).
    """
    if not D.is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(D.world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    return D.all_reduce_sum(value) / D.world_size()


@register_loss("crd")
class ContrastiveRepresentation(PairedFeatureTerm):
    """CRD: NCE between L2-normalised embeddings of student and teacher against a memory bank or queue."""

    def __init__(
        self,
        feat_dim: int = 128,
        nce_k: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        memory: str = "bank",
        queue_size: int = 16384,
        positive: str = "exact",
        negatives: str = "other_class",
        student: str | Sequence[str] = "pre_logits",
        teacher: str | Sequence[str] = "pre_logits",
    ) -> None:
        super().__init__(student, teacher)
        _check_choice("memory", memory, MEMORIES)
        _check_choice("positive", positive, POSITIVES)
        _check_choice("negatives", negatives, NEGATIVES)
        for name, value in (("feat_dim", feat_dim), ("nce_k", nce_k), ("queue_size", queue_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DatakdError(f"crd.{name} must be a positive integer, got {value!r}")
        if temperature <= 0:
            raise DatakdError(f"crd.temperature must be positive, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise DatakdError(f"crd.momentum must be in [0, 1), got {momentum}")
        if memory == "queue" and positive == "relax":
            raise DatakdError("crd.positive 'relax' needs memory: bank (a queue has no per-image rows)")
        if len(self._student_spec) != 1 or len(self._teacher_spec) != 1:
            raise DatakdError("crd compares one student tap with one teacher tap (default: pre_logits)")
        self.feat_dim, self.nce_k, self.queue_size = feat_dim, nce_k, queue_size
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.memory, self.positive, self.negatives = memory, positive, negatives
        # Z/N of each anchor side (student, teacher), set at the first step; -1 = not yet.
        self.register_buffer("z", torch.full((2,), -1.0))
        self._z_known = [False, False]  # avoids a device sync per step once Z is set

    # ------------------------------------------------------------------ setup
    def build(self, ctx: SetupContext) -> None:
        self.embed_s = LinearEmbed(flat_dim(self.student_shapes[0]), self.feat_dim, normalize=True)
        self.embed_t = LinearEmbed(flat_dim(self.teacher_shapes[0]), self.feat_dim, normalize=True)
        if self.memory == "bank":
            n = int(ctx.num_train)
            self.register_buffer("memory_s", _random_memory(n, self.feat_dim))
            self.register_buffer("memory_t", _random_memory(n, self.feat_dim))
            self._index_classes(ctx.train_labels.long().cpu(), n)
        else:
            self.register_buffer("queue_s", _random_memory(self.queue_size, self.feat_dim))
            self.register_buffer("queue_t", _random_memory(self.queue_size, self.feat_dim))
            # Labels of queue entries; -1 (the random initial entries) never matches a class.
            self.register_buffer("queue_labels", torch.full((self.queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _index_classes(self, labels: torch.Tensor, n: int) -> None:
        """Class-sorted dataset order and each class's block in it, for drawing other/same-class rows."""
        if labels.dim() != 1 or labels.shape[0] != n:
            raise DatakdError(
                f"crd needs one hard label per training image, got labels of shape {labels.shape}"
            )
        order = torch.argsort(labels, stable=True)
        classes = int(labels.max()) + 1 if n else 0
        count = torch.bincount(labels, minlength=classes)
        start = torch.cumsum(count, 0) - count
        if self.negatives == "other_class" and bool((count == n).any()):
            raise DatakdError("crd.negatives 'other_class' needs at least two classes; use negatives: any")
        self.register_buffer("train_labels", labels, persistent=False)
        self.register_buffer("class_order", order, persistent=False)
        self.register_buffer("class_start", start, persistent=False)
        self.register_buffer("class_count", count, persistent=False)

    # ------------------------------------------------------------------ sampling (bank)
    def sample_negatives(self, classes: torch.Tensor, k: int) -> torch.Tensor:
        """B×k dataset indices: uniform over other classes' images (or all images), with replacement."""
        n = self.memory_s.shape[0]
        u = torch.rand(classes.shape[0], k, device=self.memory_s.device)
        if self.negatives == "any":
            return (u * n).long().clamp_max(n - 1)
        count = self.class_count[classes].unsqueeze(1)
        start = self.class_start[classes].unsqueeze(1)
        slot = (u * (n - count)).long().clamp_max(n - count - 1)
        slot = slot + count * (slot >= start)  # skip the anchor's own class block
        return self.class_order[slot]

    def sample_positives(self, indices: torch.Tensor) -> torch.Tensor:
        """The anchor's own row (exact) or a uniformly drawn row of the same class (relax)."""
        if self.positive == "exact":
            return indices
        classes = self.train_labels[indices]
        count, start = self.class_count[classes], self.class_start[classes]
        u = torch.rand(indices.shape[0], device=indices.device)
        offset = torch.minimum((u * count).long(), count - 1)
        return self.class_order[start + offset]

    # ------------------------------------------------------------------ scores
    @staticmethod
    def scores(memory: torch.Tensor, rows: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """anchors_b · memory[rows_b,k] for B×(K+1) rows; one B×N matmul when that needs less memory than
        gathering B×(K+1)×D rows (always on CIFAR), else the gather."""
        n, dim = memory.shape
        if n <= rows.shape[1] * dim:
            return torch.gather(anchors @ memory.t(), 1, rows)
        picked = memory.index_select(0, rows.reshape(-1)).view(*rows.shape, dim)
        return torch.bmm(picked, anchors.unsqueeze(2)).squeeze(2)

    def _init_z(self, side: int, logits: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if self._z_known[side] or bool(self.z[side] >= 0):
            self._z_known[side] = True
            return
        with torch.no_grad():
            e = logits.exp()
            mean = e.mean() if mask is None else e[mask].mean()
            self.z[side] = _mean_over_ranks(mean.float())
        self._z_known[side] = True

    def _log_noise(self, side: int, negatives: torch.Tensor) -> torch.Tensor:
        """log(m·Z/N) with m the number of negatives (a scalar or one per row)."""
        return torch.log(negatives.to(self.z.dtype) * self.z[side])

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: TermInputs) -> torch.Tensor:
        ((fs, ft),) = self.pairs(inputs)
        vs, vt = self.embed_s(fs), self.embed_t(ft)
        if self.memory == "bank":
            return self._bank_loss(inputs, vs, vt)
        return self._queue_loss(inputs, vs, vt)

    def _bank_loss(self, inputs: TermInputs, vs: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
        view = inputs.view
        if view.indices is None:
            raise DatakdError(
                f"loss term {self.term_name!r} (crd, memory: bank) needs the dataset indices of view "
                f"{view.name!r}, which has none (mixed or synthetic images cannot update a per-image bank); "
                "use memory: queue or apply crd only to views of dataset images"
            )
        indices = view.indices.to(self.memory_s.device).long()
        classes = self.train_labels[indices]
        rows = torch.cat(
            [self.sample_positives(indices).unsqueeze(1), self.sample_negatives(classes, self.nce_k)], 1
        )
        t = self.temperature
        logits_s = self.scores(self.memory_t, rows, vs) / t  # student anchor vs teacher memory
        logits_t = self.scores(self.memory_s, rows, vt) / t  # teacher anchor vs student memory
        self._init_z(0, logits_s)
        self._init_z(1, logits_t)
        m = torch.tensor(float(self.nce_k), device=vs.device)
        loss = R.nce_contrast_loss(logits_s[:, 0], logits_s[:, 1:], self._log_noise(0, m))
        loss = loss + R.nce_contrast_loss(logits_t[:, 0], logits_t[:, 1:], self._log_noise(1, m))
        self._update_bank(_gather(indices), _gather(vs.detach()), _gather(vt.detach()))
        return loss

    @torch.no_grad()
    def _update_bank(self, indices: torch.Tensor, vs: torch.Tensor, vt: torch.Tensor) -> None:
        """Momentum update of the rows at `indices`, re-normalised (CRD's memory update).

        Out of place: this step's scores were computed from the old bank and autograd still needs it.
        """
        for name, v in (("memory_s", vs), ("memory_t", vt)):
            bank = getattr(self, name)
            rows = bank.index_select(0, indices) * self.momentum + v.to(bank.dtype) * (1.0 - self.momentum)
            setattr(self, name, bank.index_copy(0, indices, F.normalize(rows, dim=1)))

    def _queue_loss(self, inputs: TermInputs, vs: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
        labels = inputs.view.labels
        mask = None
        if self.negatives == "other_class":
            if labels is None:
                raise DatakdError(
                    f"loss term {self.term_name!r} (crd, negatives: other_class) needs hard labels, but view "
                    f"{inputs.view.name!r} has none; use negatives: any for teacher-only views"
                )
            labels = labels.to(self.queue_labels.device).long()
            mask = self.queue_labels.unsqueeze(0) != labels.unsqueeze(1)
        t = self.temperature
        # Positives: the other side's current embedding, detached like a memory row.
        pos_s = (vs * vt.detach()).sum(1) / t
        pos_t = (vt * vs.detach()).sum(1) / t
        neg_s = vs @ self.queue_t.t() / t
        neg_t = vt @ self.queue_s.t() / t
        full = None if mask is None else torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
        self._init_z(0, torch.cat([pos_s.unsqueeze(1), neg_s], 1), full)
        self._init_z(1, torch.cat([pos_t.unsqueeze(1), neg_t], 1), full)
        if mask is None:
            m = torch.tensor(float(self.queue_size), device=vs.device)
        else:
            m = mask.sum(1).clamp_min(1)
        loss = R.nce_contrast_loss(pos_s, neg_s, self._log_noise(0, m), mask)
        loss = loss + R.nce_contrast_loss(pos_t, neg_t, self._log_noise(1, m), mask)
        stored = labels if labels is not None else torch.full_like(self.queue_labels[: vs.shape[0]], -1)
        self._enqueue(_gather(vs.detach()), _gather(vt.detach()), _gather(stored))
        return loss

    @torch.no_grad()
    def _enqueue(self, vs: torch.Tensor, vt: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the newest embeddings over the oldest entries (FIFO, wrapping around)."""
        size = self.queue_size
        if vs.shape[0] > size:
            vs, vt, labels = vs[-size:], vt[-size:], labels[-size:]
        slots = (self.queue_ptr + torch.arange(vs.shape[0], device=self.queue_ptr.device)) % size
        # Out of place: autograd still needs this step's queue for the scores' gradient.
        self.queue_s = self.queue_s.index_copy(0, slots, vs.to(self.queue_s.dtype))
        self.queue_t = self.queue_t.index_copy(0, slots, vt.to(self.queue_t.dtype))
        self.queue_labels.index_copy_(0, slots, labels.to(self.queue_labels.device))
        self.queue_ptr.copy_((self.queue_ptr + vs.shape[0]) % size)

    def extra_repr(self) -> str:
        size = f"queue_size={self.queue_size}" if self.memory == "queue" else f"nce_k={self.nce_k}"
        return f"{super().extra_repr()}, memory={self.memory}, {size}, feat_dim={self.feat_dim}"
