"""Trainable connectors of the feature baselines: hint regressors, embeddings, VID's variational regressor
and ReviewKD's attention-based fusion. They are submodules of their loss term, so they are saved with the
run and join the student's optimizer.

Shapes are per-sample feature shapes without the batch dimension, as `SetupContext.student_shapes` gives
them: (C, H, W) for maps, (C,) for vectors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from datakd.errors import DatakdError

Shape = tuple[int, ...]


def _map_shape(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise DatakdError(f"{what} needs a C×H×W feature map, but the tap gives shape {list(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


class HintRegressor(nn.Module):
    """FitNet's regressor from a student map to the teacher map's shape (RepDistiller's ``ConvReg`` rule):

    * equal size: 1×1 conv; student twice as large: 3×3 conv, stride 2; half as large: 4×4 transposed
      conv, stride 2; otherwise larger: a valid conv with kernel (1 + Hs − Ht, 1 + Ws − Wt);
    * otherwise smaller (no such rule in RepDistiller): the teacher target is average-pooled to the
      student's size by the term and a 1×1 conv is used (`pool_target` tells the term);

    followed by BatchNorm and, as in RepDistiller/mdistiller, a ReLU (``relu: false`` drops it).
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape, relu: bool = True) -> None:
        super().__init__()
        cs, hs, ws = _map_shape(student_shape, "fitnet (student tap)")
        ct, ht, wt = _map_shape(teacher_shape, "fitnet (teacher tap)")
        self.pool_target = False
        if (hs, ws) == (ht, wt):
            conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=1)
        elif (hs, ws) == (2 * ht, 2 * wt):
            conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif (2 * hs, 2 * ws) == (ht, wt):
            conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            conv = nn.Conv2d(cs, ct, kernel_size=1)
            self.pool_target = True
        self.conv = conv
        self.bn = nn.BatchNorm2d(ct)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class LinearEmbed(nn.Module):
    """Flatten + linear projection (CC's and CRD's embedding heads), optionally L2-normalised (CRD)."""

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        return F.normalize(out, dim=1) if self.normalize else out


def flat_dim(shape: Shape) -> int:
    return int(math.prod(shape))


class VariationalRegressor(nn.Module):
    """VID's predictor of the teacher map: three 1×1 convs (student → mid → mid → teacher channels, ReLU
    between) give the Gaussian mean; one learned variance per teacher channel, softplus(α) + ε, starts at
    `init_variance` (the authors' 5.0)."""

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, init_variance: float, eps: float
    ) -> None:
        super().__init__()
        if init_variance <= eps:
            raise DatakdError(f"vid.init_variance must exceed vid.eps ({eps}), got {init_variance}")
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        # softplus^{-1}(init − ε) = log(exp(init − ε) − 1), so the variance starts exactly at init.
        alpha = math.log(math.expm1(init_variance - eps))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(x)


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF) for one level.

    The student feature goes through 1×1 conv + BN to `mid` channels; unless this is the deepest level, the
    fused feature from the level below (resized, nearest, to this level's size) is mixed in with two
    sigmoid attention maps predicted by a 1×1 conv of both; the result is resized (nearest) to the teacher
    level's size, kept as the residual for the next level, and a 3×3 conv + BN maps it to the teacher's
    channels.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise DatakdError("ReviewKD fusion needs the deeper level's residual")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, residual], dim=1))
            x = x * weights[:, :1] + residual * weights[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.output(x), x
