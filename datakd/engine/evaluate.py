"""Top-1/top-5 accuracy of a model on a loader (used every epoch, for the teacher, and by `datakd eval`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datakd.data.loaders import Batch


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    autocast: Callable[[], Any] = contextlib.nullcontext,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Accuracy and mean CE over `batches`; `reduce` sums counts across DDP ranks when given."""
    was_training = model.training
    model.eval()
    totals = None
    try:
        iterator = tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
        for batch in iterator:
            with autocast():
                logits = model(batch.images)
            logits = logits.float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hits = topk.eq(batch.labels.view(-1, 1))
            stats = torch.stack(
                [
                    hits[:, 0].sum().float(),
                    hits.any(dim=1).sum().float(),
                    F.cross_entropy(logits, batch.labels, reduction="sum"),
                    torch.tensor(float(len(batch)), device=logits.device),
                ]
            )
            totals = stats if totals is None else totals + stats
    finally:
        model.train(was_training)
    if totals is None:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan")}
    if reduce is not None:
        totals = reduce(totals)
    top1, top5, loss, n = totals.tolist()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n}
