"""DPK's mask strategies (paper Table 6): which token positions take the teacher's prior knowledge.

* `random` (default): exactly round(π·N) positions per sample, uniformly (`dpk_blocks.random_token_mask`).
* `block` (BEiT, Bao et al. 2022, Alg. 1): rectangles of random area and aspect ratio are added until the
  sample has round(π·N) masked tokens, so the prior arrives as contiguous regions. Each rectangle covers
  at least `MIN_BLOCK` tokens (BEiT: 16 of 196; the DPK grids have only 49–64 tokens) with aspect ratio in
  [0.3, 1/0.3]; it may overlap earlier ones but must add between 1 and the remaining count. When ten draws
  in a row add nothing (BEiT then stops short), the remainder is filled with uniformly random positions,
  so the ratio is exact as for `random`.
* `grid` (MAE's grid sampling): one token of every 2×2 cell keeps the student, the other three take the
  teacher — a fixed 75 % ratio (so `ratio` must be 0.75). Which of the four positions is kept is drawn
  per sample and shared by all cells, so every position is sometimes the student's. On an odd grid the
  border cells are partial and a sample's ratio varies with its phase (49 tokens: 33, 37, 37 or 40 masked),
  but averages 75 % over the four phases.

All randomness comes from the global torch RNG (checkpointed with the run). Block masks are built per
sample in Python from one batched draw, on the CPU (a few µs per rectangle), then moved to the device.
"""

from __future__ import annotations

import math

import torch

from datakd.errors import ConfigError, choice_error
from datakd.losses.dpk_blocks import masked_count, random_token_mask

MASKS = ("random", "block", "grid")
MIN_BLOCK = 4
MAX_ASPECT = 1 / 0.3
ATTEMPTS = 10  # rectangle draws per block before giving up on it (BEiT: 10)
GRID_RATIO = 0.75


def check_mask(kind: str, ratio: object) -> None:
    """Build-time validation of a mask strategy against the `ratio` setting."""
    if kind not in MASKS:
        raise choice_error("dpk.mask", kind, MASKS, ConfigError)
    if kind == "grid" and ratio != GRID_RATIO:
        raise ConfigError(f"dpk.mask=grid masks 3 of every 2×2 tokens (ratio 0.75); got dpk.ratio={ratio!r}")


def grid_token_mask(batch: int, rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """B×N mask: True except at one position of every 2×2 cell (a per-sample phase shared by all cells)."""
    phase = torch.randint(0, 4, (batch,)).to(device)
    r = torch.arange(rows, device=device).view(1, rows, 1)
    c = torch.arange(cols, device=device).view(1, 1, cols)
    kept = (r % 2 == (phase // 2).view(-1, 1, 1)) & (c % 2 == (phase % 2).view(-1, 1, 1))
    return (~kept).reshape(batch, rows * cols)


def _one_block_mask(rows: int, cols: int, target: int, draws: list[list[float]]) -> list[bool]:
    """BEiT's block-wise masking for one sample, consuming the pre-drawn uniforms in `draws`."""
    mask = [False] * (rows * cols)
    count, k = 0, 0
    while count < target and k < len(draws):
        remaining = target - count
        added = 0
        for _ in range(ATTEMPTS):
            if k >= len(draws):
                break
            u_area, u_aspect, u_top, u_left = draws[k]
            k += 1
            area = MIN_BLOCK + u_area * (max(remaining, MIN_BLOCK) - MIN_BLOCK)
            aspect = math.exp(-math.log(MAX_ASPECT) + u_aspect * 2 * math.log(MAX_ASPECT))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (1 <= h < rows and 1 <= w < cols):
                continue
            top, left = int(u_top * (rows - h + 1)), int(u_left * (cols - w + 1))
            cells = [(top + i) * cols + left + j for i in range(h) for j in range(w)]
            new = [p for p in cells if not mask[p]]
            if 0 < len(new) <= remaining:
                for p in new:
                    mask[p] = True
                added = len(new)
                break
        if added == 0:
            break
        count += added
    return mask


def block_token_mask(
    ratio: torch.Tensor | float, batch: int, rows: int, cols: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """B×N mask with exactly round(π·N) True entries per sample, placed as BEiT-style rectangles."""
    tokens = rows * cols
    target = int(masked_count(ratio, tokens))  # a host sync when π is a device tensor (CKA)
    budget = 4 * tokens  # ample: each block consumes ≤ ATTEMPTS draws and adds ≥ 1 token
    draws = torch.rand(batch, budget, 4).tolist()
    masks = torch.tensor([_one_block_mask(rows, cols, target, d) for d in draws], dtype=torch.bool)
    # Fill any shortfall with random free positions: the free ones with the smallest noise.
    short = target - masks.sum(dim=1)
    noise = torch.rand(batch, tokens).masked_fill(masks, 2.0)
    rank = noise.argsort(dim=1).argsort(dim=1)
    masks |= rank < short.view(-1, 1)
    return masks.to(device)


def token_mask(
    kind: str,
    ratio: torch.Tensor | float,
    batch: int,
    rows: int,
    cols: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """B×N bool mask (True = the token comes from the prior) of the chosen strategy on a rows×cols grid."""
    if kind == "random":
        return random_token_mask(ratio, batch, rows * cols, device)
    if kind == "block":
        return block_token_mask(ratio, batch, rows, cols, device)
    if kind == "grid":
        return grid_token_mask(batch, rows, cols, device)
    raise choice_error("dpk.mask", kind, MASKS, ConfigError)
