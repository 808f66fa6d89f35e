"""DPK Table 6 mask strategies: block-wise (BEiT) and grid-wise (MAE) geometry and ratio, wired into the
transformation modules and the loss term."""

from __future__ import annotations

import pytest
import torch

from datakd.errors import ConfigError
from datakd.losses.dpk import DynamicPriorKnowledge
from datakd.losses.dpk_masks import _one_block_mask, block_token_mask, grid_token_mask, token_mask
from datakd.losses.dpk_transforms import StageSpec, TokenTransform


def neighbour_share(masks: torch.Tensor, rows: int, cols: int) -> float:
    """Share of masked tokens whose right or lower neighbour is masked too (contiguity)."""
    grid = masks.view(-1, rows, cols)
    right = grid[:, :, :-1] & grid[:, :, 1:]
    down = grid[:, :-1, :] & grid[:, 1:, :]
    return float((right.sum() + down.sum()) / (2 * grid.sum()))


def test_one_block_is_a_hand_placed_rectangle() -> None:
    # area 4 (the minimum), aspect exp(0) = 1 -> a 2×2 block at the top-left corner of a 4×4 grid
    mask = _one_block_mask(4, 4, 4, [[0.0, 0.5, 0.0, 0.0]])
    assert [i for i, m in enumerate(mask) if m] == [0, 1, 4, 5]
    # same block at the bottom-right: top = left = int(0.99 * 3) = 2
    mask = _one_block_mask(4, 4, 4, [[0.0, 0.5, 0.99, 0.99]])
    assert [i for i, m in enumerate(mask) if m] == [10, 11, 14, 15]
    # a block that would overshoot the target (4 new tokens > 3 remaining) is rejected
    assert not any(_one_block_mask(4, 4, 3, [[0.0, 0.5, 0.0, 0.0]]))


@pytest.mark.parametrize(("rows", "cols"), [(8, 8), (7, 7), (4, 4), (2, 4)])
@pytest.mark.parametrize("ratio", [0.15, 0.5, 0.75, 0.95])
def test_block_masks_hit_the_ratio_exactly(rows: int, cols: int, ratio: float) -> None:
    torch.manual_seed(0)
    masks = block_token_mask(ratio, 32, rows, cols)
    expected = int(ratio * rows * cols + 0.5)
    assert masks.dtype == torch.bool and masks.shape == (32, rows * cols)
    assert masks.sum(1).tolist() == [expected] * 32
    # a device tensor (π = 1 − CKA) works too
    dynamic = block_token_mask(torch.tensor(ratio, dtype=torch.float64), 4, rows, cols)
    assert dynamic.sum(1).tolist() == [expected] * 4


def test_block_masks_are_contiguous_random_masks_are_not() -> None:
    torch.manual_seed(0)
    block = block_token_mask(0.4, 400, 8, 8)
    random = token_mask("random", 0.4, 400, 8, 8)
    # random, 26 of 64 masked: 2·56 neighbour pairs, each fully masked w.p. (26·25)/(64·63), over 2·26
    assert neighbour_share(random, 8, 8) == pytest.approx(56 * 25 / (64 * 63), abs=0.015)
    assert neighbour_share(block, 8, 8) > 0.6
    # every position is used, and the masks differ between samples
    assert (block.float().mean(0) > 0.1).all()
    assert len({tuple(m.tolist()) for m in block}) > 350


def test_grid_keeps_one_token_per_2x2_cell_with_a_per_sample_phase() -> None:
    torch.manual_seed(0)
    masks = grid_token_mask(200, 8, 8)
    assert masks.sum(1).tolist() == [48] * 200  # exactly 75 %
    kept = (~masks).view(200, 4, 2, 4, 2)  # cells (i, a, j, b): one kept token per 2×2 cell
    assert (kept.sum(dim=(2, 4)) == 1).all()
    # the kept offset (a, b) is the same in every cell of a sample; all four phases occur
    offsets = kept.permute(0, 1, 3, 2, 4).reshape(200, 16, 4).float().argmax(-1)
    assert (offsets == offsets[:, :1]).all()
    assert set(offsets[:, 0].tolist()) == {0, 1, 2, 3}
    # kept tokens are never 4-neighbours of each other
    assert neighbour_share(~masks, 8, 8) == 0.0


def test_grid_on_an_odd_grid_averages_75_percent() -> None:
    torch.manual_seed(0)
    masks = grid_token_mask(4000, 7, 7)
    assert set(masks.sum(1).tolist()) == {33, 37, 40}  # phases keep 16, 12, 12 or 9 of 49
    assert float(masks.float().mean()) == pytest.approx(0.75, abs=0.005)


@pytest.mark.parametrize("mask", ["block", "grid"])
def test_the_stage_module_stitches_where_the_mask_says(mask: str) -> None:
    torch.manual_seed(0)
    spec = StageSpec(8, 8, 8, 8, 1, 16, 2, 1, 1, 4.0, "teacher", mask)
    module = TokenTransform(spec)
    out = module(torch.randn(4, 8, 8, 8), torch.randn(4, 8, 8, 8), 0.75)
    assert out.prediction.shape == (4, 8, 8, 8)
    kept = out.student_positions.view(4, 64)
    assert kept.sum(1).tolist() == [16] * 4
    if mask == "grid":
        assert neighbour_share(kept, 8, 8) == 0.0


def test_mask_option_on_the_term() -> None:
    assert DynamicPriorKnowledge(ratio=0.75, mask="grid").mask == "grid"
    assert DynamicPriorKnowledge(ratio="cka", mask="block").mask == "block"
    with pytest.raises(ConfigError, match=r"dpk.mask=grid .* got dpk.ratio='cka'"):
        DynamicPriorKnowledge(ratio="cka", mask="grid")
    with pytest.raises(ConfigError, match=r"unknown dpk.mask 'blocks'.*did you mean 'block'"):
        DynamicPriorKnowledge(mask="blocks")
