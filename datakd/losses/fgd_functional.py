"""Pure formulas of FGD, Focal and Global Distillation (Yang et al., CVPR 2022), one FPN level at a time.

No modules and no state: the masks from ground-truth boxes, the spatial and channel attentions, the focal
(foreground/background) feature loss, the attention loss, the global-context pooling and the relation loss.
`datakd.losses.fgd` wires them to the trainable parts (align conv, GC blocks). Spec: methods.md §7.2,
checked against the authors' `mmdet/distillation/losses/fgd.py` (yzd-v/FGD).

Every loss sums over channels and positions and divides by the batch size N, as the authors do; maps are
N×C×H×W, spatial attentions N×H×W, channel attentions N×C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from datakd.errors import DatakdError


def box_masks(
    boxes: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    feature_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground, background) masks, each N×h×w, from per-image n_i×4 xyxy boxes in image pixels.

    As in the authors' code: a box is scaled by (w / image width, h / image height) with the image size
    given here (the authors pass the unpadded size while the feature map covers the padded batch), then
    covers columns floor(x1)..ceil(x2) and rows floor(y1)..ceil(y2), both inclusive, cut at the map's edge;
    its value is 1 / (rows · columns) with the counts taken before the cut (so a box reaching the right or
    bottom edge counts one cell more than the map shows). Overlapping boxes keep the larger value (the
    smaller box). Background = 1[fg = 0] / number of such cells (all zero when every cell is foreground).
    Negative starts are clamped to 0 (only reachable with boxes outside the image).
    """
    h, w = feature_size
    if len(boxes) != len(image_sizes):
        raise DatakdError(f"fgd masks: {len(boxes)} box sets for {len(image_sizes)} image sizes")
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    fg = torch.zeros(len(boxes), h, w, device=device)
    for i, (b, (img_h, img_w)) in enumerate(zip(boxes, image_sizes)):
        b = b.detach().reshape(-1, 4).float()
        if len(b) == 0:
            continue
        x1 = torch.floor(b[:, 0] / img_w * w).long()
        x2 = torch.ceil(b[:, 2] / img_w * w).long()
        y1 = torch.floor(b[:, 1] / img_h * h).long()
        y2 = torch.ceil(b[:, 3] / img_h * h).long()
        value = 1.0 / ((y2 + 1 - y1) * (x2 + 1 - x1)).float()
        x1, y1 = x1.clamp_min(0), y1.clamp_min(0)
        inside = (
            (rows >= y1.view(-1, 1, 1))
            & (rows <= y2.view(-1, 1, 1))
            & (cols >= x1.view(-1, 1, 1))
            & (cols <= x2.view(-1, 1, 1))
        )
        fg[i] = (inside.float() * value.view(-1, 1, 1)).amax(dim=0)
    bg = (fg == 0).float()
    count = bg.sum(dim=(1, 2), keepdim=True)
    bg = torch.where(count > 0, bg / count.clamp_min(1), bg)
    return fg, bg


def attention(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial N×H×W, channel N×C) attention of a map: H·W·softmax over positions of the channel-mean
    |F| / T, and C·softmax over channels of the position-mean |F| / T (each sums to H·W resp. C)."""
    if temperature <= 0:
        raise DatakdError(f"fgd temperature must be positive, got {temperature}")
    n, c, h, w = features.shape
    value = features.abs()
    spatial = h * w * F.softmax(value.mean(dim=1).reshape(n, -1) / temperature, dim=1)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def focal_feature_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    spatial_t: torch.Tensor,
    channel_t: torch.Tensor,
) -> torch.Tensor:
    """(1/N)·Σ M·A^S_T·A^C_T·(F_S − F_T)²: L_fg with the foreground mask, L_bg with the background one;
    the attention is the teacher's only."""
    weight = mask.unsqueeze(1) * spatial_t.unsqueeze(1) * channel_t[:, :, None, None]
    return (weight * (student - teacher).pow(2)).sum() / student.shape[0]


def attention_loss(
    spatial_s: torch.Tensor, spatial_t: torch.Tensor, channel_s: torch.Tensor, channel_t: torch.Tensor
) -> torch.Tensor:
    """(1/N)·(Σ|A^C_S − A^C_T| + Σ|A^S_S − A^S_T|): L1 between the student's and teacher's attentions."""
    n = spatial_s.shape[0]
    return (channel_s - channel_t).abs().sum() / n + (spatial_s - spatial_t).abs().sum() / n


def context_pool(features: torch.Tensor, key_logits: torch.Tensor) -> torch.Tensor:
    """The GC block's global context N×C×1×1: Σ_j softmax_j(key)·F_j over positions j, given the
    N×1×H×W output of its 1×1 key conv."""
    n, c, h, w = features.shape
    weights = F.softmax(key_logits.reshape(n, h * w), dim=1)
    return torch.einsum("ncp,np->nc", features.reshape(n, c, h * w), weights).reshape(n, c, 1, 1)


def relation_loss(student_global: torch.Tensor, teacher_global: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ(GC_S(F_S) − GC_T(F_T))²: the global (relation) loss."""
    return (student_global - teacher_global).pow(2).sum() / student_global.shape[0]
