"""Dataset readers against small files written in the real on-disk formats (nothing is downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png, read_file

from datakd.data import tiny_imagenet
from datakd.data.base import DATASETS, ImageArrays, ImageFiles
from datakd.data.splits import make_validation_split, take_subset
from datakd.errors import ConfigError, DatakdError

# torchvision 0.29 deprecates torchvision.io codecs (torchcodec is not a dependency); the tests use them.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

# --------------------------------------------------------------------------------------------- CIFAR


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N×3×32×32 → N×3072 built plane by plane, the way the release stores it (R, G, B; rows of 32)."""
    return np.stack([np.concatenate([img[c].ravel() for c in range(3)]) for img in images])


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def make_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images = rng.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 5 * per_batch)
    test_images = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    test_labels = rng.integers(0, 10, n_test)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        dump(
            folder / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": [int(x) for x in train_labels[part]],
                b"data": cifar_rows(train_images[part]),
                b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
            },
        )
    dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(x) for x in test_labels],
            b"data": cifar_rows(test_images),
            b"filenames": [f"t_{i}.png".encode() for i in range(n_test)],
        },
    )
    dump(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [f"class{i}".encode() for i in range(10)],
            b"num_vis": 3072,
        },
    )
    return train_images, train_labels, test_images, test_labels


def make_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = []
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 100, n)
        dump(
            folder / name,
            {
                b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
                b"batch_label": name.encode(),
                b"fine_labels": [int(x) for x in labels],
                b"coarse_labels": [int(x) // 5 for x in labels],
                b"data": cifar_rows(images),
            },
        )
        arrays += [images, labels]
    dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return tuple(arrays)


def test_cifar_row_layout_is_channel_planes() -> None:
    image = np.arange(3 * 32 * 32, dtype=np.int64).reshape(1, 3, 32, 32) % 251
    row = cifar_rows(image.astype(np.uint8))[0]
    c, y, x = 2, 5, 7
    assert row[c * 1024 + y * 32 + x] == image[0, c, y, x]


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_pixel_exact(tmp_path: Path, point_at_folder: bool) -> None:
    train_images, train_labels, test_images, test_labels = make_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_folder else tmp_path
    bundle = DATASETS.build("cifar10", root=str(root))
    assert isinstance(bundle.train, ImageArrays) and bundle.in_memory
    assert bundle.train.images.shape == (20, 3, 32, 32) and bundle.test.images.shape == (6, 3, 32, 32)
    assert torch.equal(bundle.train.images, torch.from_numpy(train_images))
    assert torch.equal(bundle.test.images, torch.from_numpy(test_images))
    assert bundle.train.labels.dtype == torch.int64
    assert bundle.train.labels.tolist() == train_labels.tolist()
    assert bundle.test.labels.tolist() == test_labels.tolist()
    assert bundle.num_classes == 10 and bundle.class_names == tuple(f"class{i}" for i in range(10))
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2470, 0.2435, 0.2616)
    assert bundle.image_size == (32, 32) and bundle.default_augment == "crop_flip"


def test_cifar100_fine_labels_and_names(tmp_path: Path) -> None:
    train_images, train_labels, test_images, test_labels = make_cifar100(tmp_path)
    bundle = DATASETS.build("cifar100", root=str(tmp_path))
    assert torch.equal(bundle.train.images, torch.from_numpy(train_images))
    assert torch.equal(bundle.test.images, torch.from_numpy(test_images))
    assert bundle.train.labels.tolist() == train_labels.tolist()
    assert bundle.test.labels.tolist() == test_labels.tolist()
    assert bundle.num_classes == 100 and len(bundle.class_names) == 100 and bundle.class_names[7] == "fine7"
    assert bundle.mean == (0.5071, 0.4867, 0.4408) and bundle.std == (0.2675, 0.2565, 0.2761)


def test_cifar_missing_file_names_path_and_download(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatakdError) as info:
        DATASETS.build("cifar10", root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "data_batch_3" in message and "data.download=true" in message


def test_cifar_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatakdError, match=r"cifar-100-python/meta.*data\.download=true"):
        DATASETS.build("cifar100", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatakdError, match="needs a data root"):
        DATASETS.build("cifar100")


def test_cifar_corrupt_batch(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatakdError, match="not a readable pickle"):
        DATASETS.build("cifar10", root=str(tmp_path))


def test_cifar_download_uses_torchvision_then_our_reader(tmp_path: Path, monkeypatch) -> None:
    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            make_cifar10(Path(root))

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    bundle = DATASETS.build("cifar10", root=str(tmp_path / "new"), download=True)
    assert calls == [(str(tmp_path / "new"), True)] and len(bundle.train) == 20
    DATASETS.build("cifar10", root=str(tmp_path / "new"), download=True)  # already there: no second fetch
    assert len(calls) == 1


def test_unknown_option_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in_memory"):
        DATASETS.build("cifar10", root=str(tmp_path), in_memory=True)
    assert {"cifar10", "cifar100", "tiny-imagenet", "imagefolder"} <= set(DATASETS.names())


# -------------------------------------------------------------------------------------- Tiny-ImageNet

WNIDS = ["n02", "n01", "n03"]  # wnids.txt is not sorted in the release either


def write_jpeg(path: Path, seed: int, channels: int = 3, size: int = 64) -> None:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())


def make_tiny(root: Path, per_class: int = 3) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text(
        "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander, Salamandra\n"
        "n03\tbullfrog, Rana catesbeiana\n"
    )
    for w, wnid in enumerate(WNIDS):
        for i in range(per_class):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", seed=10 * w + i)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate(["n03", "n01", "n02", "n01"]):
        write_jpeg(folder / "val" / "images" / f"val_{i}.JPEG", seed=100 + i, channels=1 if i == 1 else 3)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t3\t40\t50")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_jpeg(folder / "test" / "images" / "test_0.JPEG", seed=999)  # unlabelled: ignored
    return folder


def test_tiny_imagenet_files(tmp_path: Path) -> None:
    folder = make_tiny(tmp_path)
    bundle = DATASETS.build("tiny-imagenet", root=str(tmp_path))
    assert isinstance(bundle.train, ImageFiles) and not bundle.in_memory
    assert bundle.num_classes == 3 and bundle.extra["wnids"] == ("n01", "n02", "n03")
    assert bundle.class_names == ("goldfish", "European fire salamander", "bullfrog")
    assert len(bundle.train) == 9 and bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert bundle.train.paths[3] == folder / "train" / "n02" / "images" / "n02_0.JPEG"
    assert [p.name for p in bundle.test.paths] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG", "val_3.JPEG"]
    assert bundle.test.labels.tolist() == [2, 0, 1, 0]
    assert bundle.image_size == (64, 64) and bundle.default_augment == "crop_flip"
    assert bundle.mean == (0.485, 0.456, 0.406) and bundle.std == (0.229, 0.224, 0.225)
    # Pointing at the tiny-imagenet-200 folder itself works too.
    assert len(DATASETS.build("tiny-imagenet", root=str(folder)).train) == 9


def test_tiny_imagenet_in_memory_matches_files(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    files = DATASETS.build("tiny-imagenet", root=str(tmp_path))
    arrays = DATASETS.build("tiny-imagenet", root=str(tmp_path), in_memory=True)
    assert isinstance(arrays.train, ImageArrays) and arrays.in_memory
    assert arrays.train.images.shape == (9, 3, 64, 64) and arrays.test.images.shape == (4, 3, 64, 64)
    assert torch.equal(arrays.train.labels, files.train.labels)
    assert torch.equal(arrays.test.labels, files.test.labels)
    for split_files, split_arrays in ((files.train, arrays.train), (files.test, arrays.test)):
        for i, path in enumerate(split_files.paths):
            expected = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            assert torch.equal(split_arrays.images[i], expected)
    gray = arrays.test.images[1]  # the grayscale JPEG is replicated to three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_tiny_imagenet_wrong_size_in_memory(tmp_path: Path) -> None:
    folder = make_tiny(tmp_path)
    write_jpeg(folder / "train" / "n01" / "images" / "n01_0.JPEG", seed=5, size=32)
    with pytest.raises(DatakdError, match=r"n01_0\.JPEG.*expected \(64, 64\)"):
        DATASETS.build("tiny-imagenet", root=str(tmp_path), in_memory=True)


def test_tiny_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DatakdError, match=r"tiny-imagenet-200/wnids\.txt.*data\.download=true"):
        DATASETS.build("tiny-imagenet", root=str(tmp_path / "missing"))
    folder = make_tiny(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatakdError, match=r"val_annotations\.txt"):
        DATASETS.build("tiny-imagenet", root=str(tmp_path))
    for path in (folder / "train" / "n03" / "images").iterdir():
        path.unlink()
    with pytest.raises(DatakdError, match=r"n03/images.*no \.JPEG"):
        DATASETS.build("tiny-imagenet", root=str(tmp_path))


def test_tiny_imagenet_download_is_patched_not_fetched(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_fetch(root: Path) -> None:
        calls.append(root)
        make_tiny(root)

    monkeypatch.setattr(tiny_imagenet, "fetch", fake_fetch)
    bundle = DATASETS.build("tiny-imagenet", root=str(tmp_path), download=True)
    assert calls == [tmp_path] and len(bundle.train) == 9


# ---------------------------------------------------------------------------------------- ImageFolder


def write_png(path: Path, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image).numpy().tobytes())


def make_imagefolder(root: Path) -> None:
    # Case-sensitive sort (like torchvision ImageFolder): "Zebra" < "ant" < "bee".
    for split in ("train", "val", "holdout"):
        write_png(root / split / "bee" / "b1.png", 1)
        write_jpeg(root / split / "bee" / "nested" / "b2.JPG", 2, size=24)
        write_png(root / split / "ant" / "a1.PNG", 3)
        write_jpeg(root / split / "Zebra" / "z1.jpeg", 4, size=24)
        (root / split / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "README.md").write_text("stray file next to the class folders")


def test_imagefolder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    bundle = DATASETS.build("imagefolder", root=str(tmp_path))
    assert bundle.class_names == ("Zebra", "ant", "bee") and bundle.num_classes == 3
    assert isinstance(bundle.train, ImageFiles)
    names = [p.relative_to(tmp_path / "train").as_posix() for p in bundle.train.paths]
    assert names == ["Zebra/z1.jpeg", "ant/a1.PNG", "bee/b1.png", "bee/nested/b2.JPG"]
    assert bundle.train.labels.tolist() == [0, 1, 2, 2] and bundle.test.labels.tolist() == [0, 1, 2, 2]
    assert all("/val/" in p.as_posix() for p in bundle.test.paths)
    assert bundle.image_size == (224, 224) and bundle.default_augment == "imagenet"
    assert bundle.mean == (0.485, 0.456, 0.406) and bundle.std == (0.229, 0.224, 0.225)
    for path in bundle.train.paths:  # every listed file decodes
        assert decode_image(read_file(str(path)), mode=ImageReadMode.RGB).shape[0] == 3
    other = DATASETS.build("imagefolder", root=str(tmp_path), test_dir="holdout", image_size=160)
    assert all("/holdout/" in p.as_posix() for p in other.test.paths) and other.image_size == (160, 160)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatakdError, match="does not exist"):
        DATASETS.build("imagefolder", root=str(tmp_path / "missing"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DatakdError, match="no class sub-folders"):
        DATASETS.build("imagefolder", root=str(tmp_path))
    make_imagefolder(tmp_path / "full")
    (tmp_path / "full" / "train" / "empty").mkdir()
    with pytest.raises(DatakdError, match=r"train/empty.*holds no images") as info:
        DATASETS.build("imagefolder", root=str(tmp_path / "full"))
    assert "\n" not in str(info.value)
    (tmp_path / "full" / "train" / "empty").rmdir()
    write_png(tmp_path / "full" / "val" / "unseen" / "u.png", 9)
    with pytest.raises(DatakdError, match=r"val/unseen.*no matching folder in the train split"):
        DATASETS.build("imagefolder", root=str(tmp_path / "full"))
    with pytest.raises(DatakdError, match=r"nope.*does not exist"):
        DATASETS.build("imagefolder", root=str(tmp_path / "full"), test_dir="nope")
    with pytest.raises(DatakdError, match="download is not supported"):
        DATASETS.build("imagefolder", root=str(tmp_path / "full"), download=True)


# --------------------------------------------------------------------------------------------- splits


def arrays_split(counts: list[int]) -> ImageArrays:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    labels = labels[order]
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8)
    return ImageArrays(images.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous(), labels)


def files_split(counts: list[int]) -> ImageFiles:
    labels = arrays_split(counts).labels
    return ImageFiles([Path(f"img_{i}.png") for i in range(len(labels))], labels)


def item_ids(split: ImageArrays | ImageFiles) -> list:
    if isinstance(split, ImageFiles):
        return [p.name for p in split.paths]
    return split.images[:, 0, 0, 0].tolist()


@pytest.mark.parametrize("make", [arrays_split, files_split])
def test_validation_split_seeded_stratified_disjoint(make) -> None:
    split = make([100, 60, 40])
    train, val = make_validation_split(split, 50, seed=7)
    assert len(train) == 150 and len(val) == 50
    assert torch.bincount(val.labels, minlength=3).tolist() == [25, 15, 10]
    assert torch.bincount(train.labels, minlength=3).tolist() == [75, 45, 30]
    ids_train, ids_val = item_ids(train), item_ids(val)
    assert not set(ids_train) & set(ids_val) and len(set(ids_train) | set(ids_val)) == 200
    train2, val2 = make_validation_split(split, 50, seed=7)
    assert item_ids(val2) == ids_val and item_ids(train2) == ids_train
    _, val3 = make_validation_split(split, 50, seed=8)
    assert item_ids(val3) != ids_val


def test_split_labels_follow_items() -> None:
    split = files_split([30, 20, 10])
    train, val = make_validation_split(split, 12, seed=0)
    truth = {p.name: int(label) for p, label in zip(split.paths, split.labels)}
    for part in (train, val):
        assert all(truth[p.name] == int(label) for p, label in zip(part.paths, part.labels))


def test_small_validation_split_spreads_over_classes() -> None:
    split = arrays_split([10] * 8)
    _, val = make_validation_split(split, 5, seed=1)
    counts = torch.bincount(val.labels, minlength=8)
    assert len(val) == 5 and counts.max() == 1  # fewer items than classes: at most one per class
    covered = {
        tuple(torch.bincount(make_validation_split(split, 5, seed=s)[1].labels, minlength=8).tolist())
        for s in range(10)
    }
    assert len(covered) > 1  # ties are broken by the seed, not always toward the low class indices


def test_take_subset() -> None:
    split = files_split([50, 30, 20])
    subset = take_subset(split, 10, seed=0)
    assert len(subset) == 10 and torch.bincount(subset.labels, minlength=3).tolist() == [5, 3, 2]
    assert item_ids(take_subset(split, 10, seed=0)) == item_ids(subset)
    positions = [int(p.stem.split("_")[1]) for p in subset.paths]
    assert positions == sorted(positions)  # original order kept
    assert item_ids(take_subset(split, 100, seed=4)) == item_ids(split)


def test_split_size_errors() -> None:
    split = arrays_split([5, 5])
    with pytest.raises(DatakdError, match="between 1 and 9"):
        make_validation_split(split, 10, seed=0)
    with pytest.raises(DatakdError, match="between 1 and 9"):
        make_validation_split(split, 0, seed=0)
    with pytest.raises(DatakdError, match="between 1 and 10"):
        take_subset(split, 11, seed=0)
