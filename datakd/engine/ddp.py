"""Data-parallel pieces around torch DDP: batch-norm statistics over the global batch, and gradient averaging
for parameters that live outside the DDP-wrapped student (loss-term connectors, augmenter parameters) or
whose gradients a loss term combines itself.

With batch norm synchronised, a run on N processes with per-rank batch B/N computes the same loss as one
process with batch B (up to float rounding). torch's SyncBatchNorm only runs on accelerators, so on the CPU
(gloo) `GlobalBatchNorm` does the same with autograd-aware all-reduces.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batch of all ranks (CPU/gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        local_count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), local_count])
        stats = dist_fn.all_reduce(stats)
        channels = x.shape[1]
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        shape = (1, channels, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm2d in `model`, in place, by a synchronised one; returns how many."""
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, (GlobalBatchNorm, nn.SyncBatchNorm)):
            cls = nn.SyncBatchNorm if device.type != "cpu" else GlobalBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new.to(device))
            replaced += 1
        else:
            replaced += synchronise_batchnorm(child, device)
    return replaced


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average `.grad` of `params` over ranks in one flattened all-reduce (absent grads count as zero)."""
    if not (dist.is_available() and dist.is_initialized()) or not params:
        return
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(world)
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def average_gradient_list(
    params: list[nn.Parameter], grads: list[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """Average a list of gradients (from torch.autograd.grad) over ranks; None stays None on every rank only
    when it is None everywhere, so a missing gradient is sent as zeros."""
    if not (dist.is_available() and dist.is_initialized()):
        return grads
    filled = [g if g is not None else torch.zeros_like(p) for p, g in zip(params, grads)]
    flat = _flatten_dense_tensors(filled)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    return list(_unflatten_dense_tensors(flat, filled))
