"""Tiny-ImageNet (200 classes, 64×64) from the official ``tiny-imagenet-200`` folder.

The official val split (50 labelled images per class) serves as the test split; the unlabelled ``test``
folder is ignored. Splits are file lists by default (100k JPEGs read by DataLoader workers); with
``in_memory=True`` everything is decoded once into uint8 arrays (about 1.2 GB) so the device-resident
loader can serve it like CIFAR. Labels follow the sorted wnids, which is the order torchvision's
ImageFolder gives ``train/``, so checkpoints trained either way agree.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from datakd.data.base import DatasetBundle, ImageArrays, ImageFiles, register_dataset
from datakd.errors import DatakdError

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ATTRIBUTION = "Tiny ImageNet (Stanford CS231N), an ImageNet subset; images are under ImageNet's terms of use"


def _required(path: Path) -> Path:
    if not path.exists():
        raise DatakdError(
            f"Tiny-ImageNet file {str(path)!r} not found; point data.root at the folder holding {FOLDER!r} "
            "or set data.download=true"
        )
    return path


def find_folder(root: Path) -> Path:
    """`root/tiny-imagenet-200` when present, else `root` itself if it holds wnids.txt."""
    nested = root / FOLDER
    return root if not nested.is_dir() and (root / "wnids.txt").is_file() else nested


def read_classes(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    """Sorted wnids and their first WordNet synonym from words.txt (the wnid itself when absent)."""
    wnids = sorted({line.strip() for line in _required(folder / "wnids.txt").read_text().splitlines()} - {""})
    words: dict[str, str] = {}
    for line in _required(folder / "words.txt").read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.partition("\t")
        words[wnid.strip()] = text.split(",")[0].strip()
    return wnids, tuple(words.get(w) or w for w in wnids)


def read_train(folder: Path, index: dict[str, int]) -> ImageFiles:
    paths: list[Path] = []
    labels: list[int] = []
    for wnid, label in index.items():
        images = _required(folder / "train" / wnid / "images")
        files = sorted(images.glob("*.JPEG"))
        if not files:
            raise DatakdError(f"Tiny-ImageNet folder {str(images)!r} has no .JPEG images")
        paths += files
        labels += [label] * len(files)
    return ImageFiles(paths, torch.tensor(labels, dtype=torch.int64))


def read_val(folder: Path, index: dict[str, int]) -> ImageFiles:
    """The labelled val split: one `file<TAB>wnid<TAB>box…` line per image in val_annotations.txt."""
    annotations = _required(folder / "val" / "val_annotations.txt")
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DatakdError(f"{str(annotations)!r} line {number}: expected 'file<TAB>wnid', known wnid")
        paths.append(_required(folder / "val" / "images" / fields[0]))
        labels.append(index[fields[1]])
    return ImageFiles(paths, torch.tensor(labels, dtype=torch.int64))


def decode_all(split: ImageFiles, size: tuple[int, int] = (64, 64)) -> ImageArrays:
    """Decode every file to RGB uint8 (grayscale JPEGs are expanded) into one N×3×H×W tensor."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    images = torch.empty((len(split), 3, *size), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of torchcodec, which we do not depend on.
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for i, path in enumerate(split.paths):
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
            if tuple(image.shape[1:]) != size:
                found = tuple(image.shape[1:])
                raise DatakdError(f"Tiny-ImageNet image {str(path)!r} is {found}, expected {size}")
            images[i] = image
    return ImageArrays(images, split.labels.clone())


def fetch(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(URL, str(root), md5=MD5)
    except Exception as exc:  # network or archive failures surface as one line
        raise DatakdError(f"downloading Tiny-ImageNet into {str(root)!r} failed: {exc}") from exc


@register_dataset("tiny-imagenet")
def tiny_imagenet(root: str | None = None, download: bool = False, in_memory: bool = False) -> DatasetBundle:
    """Tiny-ImageNet (100k train / 10k val as test, 64×64, 200 classes); files, or arrays if in_memory."""
    if root is None:
        raise DatakdError("dataset 'tiny-imagenet' needs a data root: pass --data-root DIR or data.root=DIR")
    path = Path(root).expanduser()
    folder = find_folder(path)
    if download and not (folder / "wnids.txt").is_file():
        fetch(path)
        folder = find_folder(path)
    wnids, names = read_classes(folder)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train: ImageFiles | ImageArrays = read_train(folder, index)
    test: ImageFiles | ImageArrays = read_val(folder, index)
    if in_memory:
        train, test = decode_all(train), decode_all(test)
    return DatasetBundle(
        name="tiny-imagenet",
        train=train,
        test=test,
        num_classes=len(wnids),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=names,
        image_size=(64, 64),
        default_augment="crop_flip",
        attribution=ATTRIBUTION,
        extra={"wnids": tuple(wnids)},
    )
