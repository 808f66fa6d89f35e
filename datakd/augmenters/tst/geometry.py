"""How dense targets follow f_DE's one affine Â (TST App. D.1 warps the image; the targets are ours).

Â is a B×2×3 matrix in `F.affine_grid`'s convention: it maps an *output* point to the *input* point it is
sampled from, in normalised coordinates u = 2x/W − 1 (align_corners False; x continuous, pixel j covers
[j, j + 1)). Targets use the same matrix, detached:

* masks and label maps are warped by the very warp the image takes (`encoders.warp`), with nearest
  sampling: a mask pixel is on where the image pixel comes from inside the object; label-map pixels that
  come from outside the canvas are 255 (ignore);
* a box with a mask becomes the tight box of its warped mask; a box without one is mapped corner by corner
  (input → output, the inverse of Â), clipped to the canvas (Sutherland–Hodgman), and replaced by the
  bounding box of what is left;
* an object is dropped when less than `min_visible` of it stays on the canvas (mask: warped pixels over the
  pixels an unclipped warp would give, area / |det Â|; box: area of the clipped quadrilateral over its whole
  area), or when its new box is thinner than `min_size` pixels.

Stage II (θ carries grad) also needs the targets to move with θ in the *gradient*: with detached targets,
θ's gradient through a geometric op is the loss of an image that moved under boxes that did not — a
misalignment that raises the teacher's loss as much as the student's — while in the real forward the boxes
move with the image. `boxes_follow_theta` makes the kept boxes straight-through: their values stay exactly
what `warp_target` computes (so the forward is unchanged), their gradient is that of the original box
mapped by Â's inverse and clipped as above, computed in autograd (`mapped_boxes`; a side the canvas clips
does not move). For an object with a mask this is the gradient of its corner-mapped box, which the tight
box of its warped mask matches within a pixel. Masks and label maps keep no gradient (nearest sampling has
none).
"""

from __future__ import annotations

from typing import Any

import torch

from datakd.augmenters.tst.encoders import warp

IGNORE = 255
# Our defaults: an object of which less than a quarter stays visible is a fragment a detector should not be
# asked to find; a box thinner than one pixel cannot be regressed (torchvision rejects empty boxes).
MIN_VISIBLE = 0.25
MIN_SIZE = 1.0
Point = tuple[Any, Any]  # (x, y): floats, or 0-dim tensors where a gradient must follow


def pixel_maps(theta: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out → in, in → out) as 3×3 maps of continuous pixel coordinates, float64, for one 2×3 matrix."""
    out_to_in = _out_to_in(theta.detach().double().cpu().reshape(2, 3), height, width)
    return out_to_in, torch.linalg.inv(out_to_in)


def _out_to_in(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A float64 2×3 Â (normalised, output → input) as a 3×3 map of pixel coordinates, on Â's device and
    differentiable in it: pixel = to_unit⁻¹ · [Â; 0 0 1] · to_unit · pixel, to_unit: x ↦ 2x/W − 1."""
    to_unit = torch.tensor(
        [[2.0 / width, 0.0, -1.0], [0.0, 2.0 / height, -1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
        device=theta.device,
    )
    last = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64, device=theta.device)
    return torch.linalg.inv(to_unit) @ torch.cat([theta, last]) @ to_unit


def _clip(polygon: list[Point], width: int, height: int) -> list[Point]:
    """Sutherland–Hodgman clipping of a polygon to the canvas [0, W] × [0, H]; the points are floats, or
    0-dim tensors (`mapped_boxes`), whose crossing points then keep their gradient."""
    edges = ((0, 0.0, 1.0), (0, float(width), -1.0), (1, 0.0, 1.0), (1, float(height), -1.0))
    for axis, bound, sign in edges:
        if not polygon:
            break
        inside = [bool(sign * (p[axis] - bound) >= 0) for p in polygon]
        kept: list[Point] = []
        for i, point in enumerate(polygon):
            previous, was_inside = polygon[i - 1], inside[i - 1]
            if inside[i] != was_inside:  # the edge crosses the boundary: keep the crossing point
                t = (bound - previous[axis]) / (point[axis] - previous[axis])
                kept.append(tuple(a + t * (b - a) for a, b in zip(previous, point)))  # type: ignore[arg-type]
            if inside[i]:
                kept.append(point)
        polygon = kept
    return polygon


def _area(polygon: list[tuple[float, float]]) -> float:
    """Shoelace area."""
    total = 0.0
    for i, (x1, y1) in enumerate(polygon):
        x2, y2 = polygon[(i + 1) % len(polygon)]
        total += x1 * y2 - x2 * y1
    return abs(total) / 2.0


def warp_boxes(
    boxes: torch.Tensor, theta: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (n×4 xyxy) under one warp: (new boxes n×4, visible fraction n); an object entirely off the
    canvas gets a zero box and visibility 0."""
    _, in_to_out = pixel_maps(theta, height, width)
    new = torch.zeros(boxes.shape[0], 4, dtype=torch.float64)
    visible = torch.zeros(boxes.shape[0], dtype=torch.float64)
    for i, (x1, y1, x2, y2) in enumerate(boxes.detach().double().cpu().tolist()):
        corners = torch.tensor(
            [[x1, y1, 1.0], [x2, y1, 1.0], [x2, y2, 1.0], [x1, y2, 1.0]], dtype=torch.float64
        )
        mapped = (corners @ in_to_out.T)[:, :2].tolist()
        quad = [(float(x), float(y)) for x, y in mapped]
        whole = _area(quad)
        clipped = _clip(quad, width, height)
        if not clipped or whole <= 0:
            continue
        xs, ys = [p[0] for p in clipped], [p[1] for p in clipped]
        new[i] = torch.tensor([min(xs), min(ys), max(xs), max(ys)], dtype=torch.float64)
        visible[i] = _area(clipped) / whole
    return new.to(boxes), visible.to(torch.float32)


def mapped_boxes(boxes: torch.Tensor, theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`warp_boxes`' new boxes (n×4, float64 on the CPU), differentiable in Â (one 2×3 matrix): the
    corners mapped input → output by Â's inverse, the quadrilateral clipped to the canvas by the same
    `_clip`, its bounding box. Where the canvas clips a side, that side does not move with θ; a box entirely
    off the canvas is a zero box without gradient. On the CPU because the clipping branches on every point
    (a device sync each on a GPU); it is meant for the few kept boxes of a Stage II batch."""
    in_to_out = torch.linalg.inv(_out_to_in(theta.reshape(2, 3).double().cpu(), height, width))
    b = boxes.detach().double().cpu()
    ones = torch.ones_like(b[:, 0])
    corners = torch.stack(
        [
            torch.stack([b[:, 0], b[:, 1], ones], 1),
            torch.stack([b[:, 2], b[:, 1], ones], 1),
            torch.stack([b[:, 2], b[:, 3], ones], 1),
            torch.stack([b[:, 0], b[:, 3], ones], 1),
        ],
        dim=1,
    )  # n×4×3
    mapped = (corners @ in_to_out.T)[..., :2]
    rows = []
    for quad in mapped:
        clipped = _clip([(point[0], point[1]) for point in quad], width, height)
        if not clipped:
            rows.append(torch.zeros(4, dtype=torch.float64, device=mapped.device))
            continue
        xs, ys = torch.stack([p[0] for p in clipped]), torch.stack([p[1] for p in clipped])
        rows.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]))
    return torch.stack(rows) if rows else mapped.new_zeros(0, 4)


def boxes_follow_theta(
    exact: torch.Tensor, original: torch.Tensor, theta: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Straight-through boxes for Stage II: the values of `exact` (what `warp_target` computed for the kept
    objects, unchanged bit for bit), the gradient in θ of `original` (those objects' boxes before the warp)
    mapped by Â's inverse (`mapped_boxes`), so a loss on the boxes sees them move with the image."""
    mapped = mapped_boxes(original, theta, height, width).to(device=exact.device, dtype=exact.dtype)
    return exact + (mapped - mapped.detach())


def warp_masks(masks: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """n×H×W binary masks through the image's warp with nearest sampling (0 outside); same dtype back."""
    if masks.shape[0] == 0:
        return masks
    warped = warp(masks[None].float(), theta.detach().reshape(1, 2, 3).to(masks.device), 0.0, "nearest")
    return (warped[0] > 0.5).to(masks.dtype)


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight xyxy boxes of n×H×W masks (pixel j spans [j, j + 1)) and whether each mask is non-empty."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    on = masks.bool()
    rows, cols = on.any(dim=2), on.any(dim=1)
    present = rows.any(dim=1)
    for i in torch.nonzero(present).flatten().tolist():
        ys, xs = torch.nonzero(rows[i]).flatten(), torch.nonzero(cols[i]).flatten()
        boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
    return boxes, present


def warp_target(
    target: dict[str, Any],
    theta: torch.Tensor,
    height: int,
    width: int,
    min_visible: float = MIN_VISIBLE,
    min_size: float = MIN_SIZE,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One image's detection target under the detached Â: (new target with the kept objects, which objects
    were kept as a bool n-vector on the CPU), so a caller can drop them elsewhere or make the kept boxes
    follow θ (`boxes_follow_theta`)."""
    boxes = target["boxes"]
    n = int(boxes.shape[0])
    if n == 0:
        return dict(target), torch.zeros(0, dtype=torch.bool)
    det = abs(float(torch.linalg.det(pixel_maps(theta, height, width)[0][:2, :2])))
    if "masks" in target:
        masks = warp_masks(target["masks"], theta)
        new_boxes, present = mask_boxes(masks)
        before = target["masks"].flatten(1).sum(1).double().cpu()
        after = masks.flatten(1).sum(1).double().cpu()
        visible = (after * det / before.clamp_min(1)).clamp(max=1.0).float()
        visible[~present.cpu()] = 0.0
        area = after.float()
    else:
        masks = None
        new_boxes, visible = warp_boxes(boxes, theta, height, width)
        area = ((new_boxes[:, 2] - new_boxes[:, 0]) * (new_boxes[:, 3] - new_boxes[:, 1])).float().cpu()
    new_boxes = new_boxes.to(boxes)
    size_ok = ((new_boxes[:, 2:] - new_boxes[:, :2]) >= min_size).all(dim=1).cpu()
    keep = (visible >= min_visible) & size_ok
    out: dict[str, Any] = {}
    for key, value in target.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n and key != "image_id":
            out[key] = value[keep.to(value.device)]
        else:
            out[key] = value
    out["boxes"] = new_boxes[keep.to(boxes.device)]
    if masks is not None:
        out["masks"] = masks[keep.to(masks.device)]
    if "area" in target:
        out["area"] = area[keep].to(target["area"])
    return out, keep


def warp_label_maps(labels: torch.Tensor, theta: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """N×H×W label maps under the image's warp: nearest, `ignore` for pixels that come from outside."""
    shifted = (labels + 1).to(torch.float32)[:, None]  # 0 = "from outside" after a zero-padded warp
    warped = warp(shifted, theta.detach().to(labels.device), 0.0, "nearest")[:, 0].round().long()
    return torch.where(warped == 0, torch.full_like(warped, ignore), warped - 1)
