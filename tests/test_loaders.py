"""The device-resident loader: crop/flip geometry, seeded randomness, resume position, DDP slicing."""

from __future__ import annotations

import torch

from datakd.data.base import ImageArrays
from datakd.data.loaders import DeviceLoader, Normalizer, derive_seed, generator_for, random_crop_flip

CPU = torch.device("cpu")


def toy(n: int = 10, size: int = 6) -> ImageArrays:
    images = (
        torch.arange(n * size * size, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, 1, size, size)
    )
    return ImageArrays(images, torch.arange(n) % 3)


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    images = toy(8).images
    out = random_crop_flip(images, padding=2, crop=True, flip=False, generator=generator_for(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(8):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_columns_and_happens_about_half_the_time() -> None:
    images = toy(400).images
    out = random_crop_flip(images, padding=0, crop=False, flip=True, generator=generator_for(1))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(400)]
    same = [torch.equal(out[i], images[i]) for i in range(400)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 150 < sum(flipped) < 250


def test_crop_offsets_cover_all_positions() -> None:
    # A single bright pixel at the centre lands in every one of the 5×5 possible positions.
    images = torch.zeros(2000, 1, 5, 5, dtype=torch.uint8)
    images[:, :, 2, 2] = 255
    out = random_crop_flip(images, padding=2, crop=True, flip=False, generator=generator_for(2))
    positions = {tuple(torch.nonzero(o[0]).flatten().tolist()) for o in out}
    positions.discard(())
    assert len(positions) == 25


def test_same_seed_same_batches_different_seed_different() -> None:
    norm = Normalizer((0.5,), (0.25,), CPU)
    a = [b.images for b in DeviceLoader(toy(), 4, norm, CPU, seed=3).epoch(0)]
    b = [b.images for b in DeviceLoader(toy(), 4, norm, CPU, seed=3).epoch(0)]
    c = [b.images for b in DeviceLoader(toy(), 4, norm, CPU, seed=4).epoch(0)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_epoch_is_a_permutation_and_resume_position_matches() -> None:
    norm = Normalizer((0.5,), (0.25,), CPU)
    loader = DeviceLoader(toy(10), 4, norm, CPU, seed=0)
    full = list(loader.epoch(5))
    assert sorted(torch.cat([b.indices for b in full]).tolist()) == list(range(10))
    resumed = list(loader.epoch(5, start_step=1))
    assert len(resumed) == len(full) - 1
    for x, y in zip(full[1:], resumed):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    other = list(loader.epoch(6))
    assert not torch.equal(torch.cat([b.indices for b in full]), torch.cat([b.indices for b in other]))


def test_never_a_batch_of_one() -> None:
    norm = Normalizer((0.5,), (0.25,), CPU)
    loader = DeviceLoader(toy(9), 4, norm, CPU, seed=0)
    assert [len(b) for b in loader.epoch(0)] == [4, 4]


def test_rank_slices_concatenate_to_the_single_process_batch() -> None:
    norm = Normalizer((0.5,), (0.25,), CPU)
    single = list(DeviceLoader(toy(16), 8, norm, CPU, seed=0, drop_last=True).epoch(2))
    ranks = [
        list(DeviceLoader(toy(16), 8, norm, CPU, seed=0, rank=r, world_size=2).epoch(2)) for r in range(2)
    ]
    for step, batch in enumerate(single):
        joined = torch.cat([ranks[0][step].images, ranks[1][step].images])
        assert torch.equal(batch.images, joined)


def test_normalizer_matches_formula_and_inverts() -> None:
    images = toy(3).images
    norm = Normalizer((0.3,), (0.2,), CPU)
    expected = (images.float() / 255 - 0.3) / 0.2
    assert torch.allclose(norm(images), expected, atol=1e-5)
    assert torch.equal(norm.inverse(norm(images)), images)


def test_derive_seed_is_stable_and_mixes() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, e, s) for e in range(20) for s in range(20)}) == 400


def _old_slicing_batches(
    split: ImageArrays, batch: int, rank: int, world: int, epoch: int
) -> list[torch.Tensor]:
    """Today's DDP path, written out: augment the whole global batch with one generator, then slice."""
    norm = Normalizer((0.5,), (0.25,), CPU)
    single = DeviceLoader(split, batch, norm, CPU, seed=3, drop_last=True)
    order = single.order(epoch)
    per = batch // world
    out = []
    for step in range(len(single)):
        idx = order[step * batch : (step + 1) * batch]
        images = random_crop_flip(split.images[idx], 2, True, True, generator_for(3, epoch, step))
        out.append(norm(images[rank * per : (rank + 1) * per]))
    return out


def test_ddp_shard_only_augmentation_equals_augment_then_slice() -> None:
    """Each rank augments only its shard (pre-padded, optionally pre-normalised) yet trains on exactly the
    images the augment-the-global-batch-then-slice path gave it."""
    split = toy(24, size=6)
    for prenormalise in (False, True):
        for rank in range(3):
            loader = DeviceLoader(
                split,
                12,
                Normalizer((0.5,), (0.25,), CPU),
                CPU,
                seed=3,
                padding=2,
                rank=rank,
                world_size=3,
                prenormalise=prenormalise,
            )
            assert loader.prepadded and loader.prenormalised == prenormalise
            assert loader.source.shape[0] == 24
            got = [b.images for b in loader.epoch(1)]
            expected = _old_slicing_batches(split, 12, rank, 3, 1)
            assert len(got) == len(expected) == 2
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
