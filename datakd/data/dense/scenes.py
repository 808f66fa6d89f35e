"""The real-image test bed: Fashion-MNIST objects composed into small textured scenes, written in the
COCO 2017 and Cityscapes layouts so the detection and segmentation paths run on the real readers.

A canvas has a smooth-noise background with 1-3 unlabelled, low-contrast fragments of other Fashion-MNIST
images (distractors), then 2-8 objects painted in order, each a Fashion-MNIST image (train canvases from
the training split, val canvases from the test split) resized to a side drawn log-uniformly from 8 px to
half the canvas. An object is its foreground, pixels > `THRESHOLD`, painted in a random tint shaded by
the original intensity. Later objects occlude earlier ones; a placement that would leave any earlier
object with less than half of its foreground visible is rejected and redrawn. Boxes are tight around the
visible mask (pixel edges), segmentation is the visible mask as uncompressed COCO RLE, area its pixel
count. COCO category ids are deliberately gapped (`CATEGORY_IDS`) to exercise the contiguous mapping.

Segmentation labels: the Fashion-MNIST class of the object owning each pixel, and the background is a
class of its own, train id 10 ("background"), so all 11 classes are scored (`classes.json` lists them).

Each canvas draws from its own generator seeded by (seed, split, index): the same seed gives
byte-identical files (MANIFEST.sha256 lists them all), and the canvases do not depend on each other.

The test bed is written into a staging folder inside the output (`.scenes-partial`, the same filesystem)
and moved into place only when complete, MANIFEST.sha256 last: a full disk or a kill mid-write never leaves
a test bed that looks complete, and with --overwrite the previous one stays intact until the new one is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datakd.data.fashion_mnist import ATTRIBUTION, CLASSES, read_split
from datakd.errors import DatakdError
from datakd.faults import STORAGE_ERRNOS, StorageError, check_writable, os_error_in, reason

# COCO category id of Fashion-MNIST class c (gapped on purpose: the reader must map them to 1..10).
CATEGORY_IDS = (1, 2, 3, 5, 7, 8, 11, 13, 17, 20)
BACKGROUND = 10  # train id of background pixels in the Cityscapes layout
THRESHOLD = 32  # Fashion-MNIST foreground: pixel value > THRESHOLD (of 255)
MIN_SIDE = 8  # smallest object side, pixels
MIN_PIXELS = 12  # an object needs this much foreground at its drawn size (else it is redrawn)
MIN_VISIBLE = 0.5  # fraction of every object's foreground that must stay visible
OBJECTS = (2, 8)
DISTRACTORS = (1, 3)
SPLITS = {"train": ("train", "train2017", 0), "val": ("test", "val2017", 1_000_000)}
OUTPUTS = ("train2017", "val2017", "annotations", "leftImg8bit", "gtFine", "classes.json", "README.md")
MANIFEST = "MANIFEST.sha256"
STAGING = ".scenes-partial"  # where a test bed is built before it is moved into place


@dataclass
class Canvas:
    """One rendered scene: RGB uint8 H×W×3, owner map (object index or -1), each object's class and its
    whole foreground's pixel count before occlusion (`full`, what the half-visible rule is measured on)."""

    image: np.ndarray
    owner: np.ndarray
    classes: list[int] = field(default_factory=list)
    full: list[int] = field(default_factory=list)

    def visible_mask(self, k: int) -> np.ndarray:
        return self.owner == k

    def label_map(self) -> np.ndarray:
        """Train ids: the class of the owning object, BACKGROUND elsewhere."""
        lut = np.array([*self.classes, BACKGROUND], dtype=np.uint8)
        return lut[self.owner]  # owner -1 picks the last entry


def _resize(image: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A float H×W map resized with antialiased bilinear interpolation (deterministic on the CPU)."""
    out = F.interpolate(image[None, None], size=(height, width), mode="bilinear", antialias=True)
    return out[0, 0].numpy()


Range = tuple[float, float]


def _tint(rng: np.random.Generator, saturation: Range, value: Range) -> np.ndarray:
    """A random RGB colour from hue, saturation and value (HSV -> RGB, vectorised formula)."""
    h, s, v = rng.random(), rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth coloured noise: two octaves of upsampled random grids around a random base colour."""
    base = rng.uniform(0.2, 0.6, size=3)
    canvas = np.empty((size, size, 3), dtype=np.float64)
    coarse = torch.from_numpy(rng.random((3, 5, 5), dtype=np.float32))
    fine = torch.from_numpy(rng.random((3, 12, 12), dtype=np.float32))
    for c in range(3):
        canvas[..., c] = (
            base[c]
            + 0.3 * (_resize(coarse[c], size, size) - 0.5)
            + 0.12 * (_resize(fine[c], size, size) - 0.5)
        )
    canvas += rng.normal(0.0, 0.015, size=canvas.shape)
    return np.clip(canvas, 0.0, 1.0)


def _distractors(rng: np.random.Generator, canvas: np.ndarray, pool: torch.Tensor) -> None:
    """Blend 1-3 low-contrast fragments of random pool images into the background (unlabelled)."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        source = pool[int(rng.integers(len(pool)))]
        fh, fw = (int(v) for v in rng.integers(8, 17, size=2))
        top, left = (int(v) for v in rng.integers(0, 28 - 16, size=2))
        side = int(rng.integers(MIN_SIDE, max(MIN_SIDE + 1, size // 3)))
        fragment = _resize(source[top : top + fh, left : left + fw].float(), side, side) / 255.0
        alpha = rng.uniform(0.12, 0.25) * fragment[..., None]
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        colour = _tint(rng, (0.2, 0.6), (0.4, 0.9))
        window = canvas[y : y + side, x : x + side]
        window *= 1 - alpha
        window += alpha * colour


def render_canvas(rng: np.random.Generator, pool: torch.Tensor, labels: np.ndarray, size: int) -> Canvas:
    """Draw one scene from `pool` (uint8 N×28×28 Fashion-MNIST images) and their `labels`."""
    canvas = _background(rng, size)
    _distractors(rng, canvas, pool)
    owner = np.full((size, size), -1, dtype=np.int64)
    full: list[int] = []
    visible: list[int] = []
    classes: list[int] = []
    wanted = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    log_lo, log_hi = math.log(MIN_SIDE), math.log(size / 2)
    for _attempt in range(wanted * 8 + 40):
        if len(classes) >= wanted:
            break
        index = int(rng.integers(len(pool)))
        side = round(math.exp(rng.uniform(log_lo, log_hi)))
        y_frac, x_frac = rng.random(2)
        colour = _tint(rng, (0.5, 1.0), (0.7, 1.0))
        intensity = _resize(pool[index].float(), side, side)
        fg = intensity > THRESHOLD
        if int(fg.sum()) < MIN_PIXELS:
            continue
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        fg = fg[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        intensity = intensity[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        h, w = fg.shape
        y, x = int(y_frac * (size - h + 1)), int(x_frac * (size - w + 1))
        window = owner[y : y + h, x : x + w]
        covered = window[fg]
        lost = np.bincount(covered[covered >= 0], minlength=len(classes))
        if any(visible[j] - lost[j] < MIN_VISIBLE * full[j] for j in range(len(classes))):
            continue  # this placement would hide more than half of an earlier object
        for j in np.flatnonzero(lost):
            visible[j] -= int(lost[j])
        k = len(classes)
        window[fg] = k
        shade = (0.35 + 0.65 * np.clip(intensity / 255.0, 0, 1))[..., None] * colour
        canvas[y : y + h, x : x + w][fg] = shade[fg]
        full.append(int(fg.sum()))
        visible.append(int(fg.sum()))
        classes.append(int(labels[index]))
    if len(classes) < OBJECTS[0]:
        raise RuntimeError(f"could not place {OBJECTS[0]} objects on a {size}x{size} canvas")
    image = np.rint(canvas * 255.0).astype(np.uint8)
    return Canvas(image, owner, classes, full)


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a boolean H×W mask: run lengths over the column-major pixels, 0s first."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def annotations_of(canvas: Canvas, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of a canvas's objects: tight box and RLE of the visible mask, area, iscrowd 0."""
    out = []
    size = canvas.owner.shape
    for k, cls in enumerate(canvas.classes):
        mask = canvas.visible_mask(k)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        x1, y1, x2, y2 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        out.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": CATEGORY_IDS[cls],
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [int(size[0]), int(size[1])], "counts": rle_counts(mask)},
            }
        )
    return out


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name `path` on an OSError raised while writing it: a failed write() carries no file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _writing(path):
        Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _writing(path):
        path.write_text(text, encoding="utf-8")


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with other files; `overwrite` will replace only what the generator writes (once the
    new test bed is complete, `_install`)."""
    if out.exists() and not out.is_dir():
        raise DatakdError(f"scenes output {str(out)!r} exists and is not a directory")
    if not out.exists():
        return
    entries = {p.name for p in out.iterdir()} - {STAGING}  # a killed run's staging folder is ours
    foreign = sorted(entries - {*OUTPUTS, MANIFEST})
    if foreign:
        raise DatakdError(
            f"scenes output {str(out)!r} holds files the generator does not write "
            f"({', '.join(foreign[:5])}); valid: a new or empty directory, or one written by "
            "`datakd data scenes`"
        )
    if entries and not overwrite:
        raise DatakdError(f"scenes output {str(out)!r} is not empty; pass --overwrite to write it again")


def _install(staging: Path, out: Path) -> None:
    """Replace the test bed in `out` by the complete one in `staging`. The old MANIFEST goes first and the
    new one comes last, so at every moment a MANIFEST means a complete test bed."""
    for name in (MANIFEST, *OUTPUTS):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in (*OUTPUTS, MANIFEST):
        os.replace(staging / name, out / name)
    staging.rmdir()


def _storage_fault(exc: OSError, out: Path, staging: Path, created: bool) -> StorageError | None:
    """One line for a write that failed while building the test bed; names the file as it would be."""
    error = os_error_in(exc)
    if error is None or error.errno not in STORAGE_ERRNOS:
        return None
    at = ""
    if error.filename:
        name = Path(os.fsdecode(error.filename))
        rel = name.relative_to(staging) if name.is_relative_to(staging) else None
        at = f" (at {rel.as_posix()!r})" if rel is not None else f" (at {str(name)!r})"
    if created:
        before = "the folder was removed again"
    elif (out / MANIFEST).is_file():
        before = "the test bed there before is intact"
    else:
        before = "the folder is as it was"
    return StorageError(
        f"cannot write the scenes test bed in {str(out)!r}{at}: {reason(error)}; nothing of this attempt "
        f"was kept and {before}; free space or choose another --out, then rerun (with --overwrite if it "
        "holds a test bed)"
    )


@dataclass
class SceneSummary:
    """What was written: canvases and objects per split, seconds taken."""

    out: Path
    canvases: dict[str, int]
    objects: dict[str, int]
    seconds: float


def write_split(
    out: Path, split: str, count: int, pool: torch.Tensor, labels: np.ndarray, size: int, seed: int
) -> int:
    """Render `count` canvases of `split` into both layouts; returns the number of objects."""
    _, folder, id_base = SPLITS[split]
    city = "scene"
    images, annotations = [], []
    split_code = 0 if split == "train" else 1
    for i in range(count):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_code, i])))
        canvas = render_canvas(rng, pool, labels, size)
        image_id = id_base + i + 1
        name = f"{image_id:012d}.png"
        _save_png(canvas.image, out / folder / name)
        stem = f"{city}_{i:06d}_000019"
        _save_png(canvas.image, out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        _save_png(canvas.label_map(), out / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        annotations += annotations_of(canvas, image_id, len(annotations) + 1)
    coco = {
        "info": {
            "description": "datakd scenes: Fashion-MNIST objects on textured canvases (test bed)",
            "version": "1",
            "seed": seed,
            "canvas": size,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": CLASSES[c], "supercategory": "fashion"} for c, cid in enumerate(CATEGORY_IDS)
        ],
    }
    _write_text(
        json.dumps(coco, separators=(",", ":")) + "\n", out / "annotations" / f"instances_{folder}.json"
    )
    return len(annotations)


def write_manifest(out: Path) -> Path:
    """`sha256  relative/path` for every file under `out` (sorted), as `sha256sum -c` reads it."""
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(out).as_posix()}\n")
    target = out / MANIFEST
    _write_text("".join(lines), target)
    return target


def _readme(train: int, val: int, size: int, seed: int) -> str:
    names = ", ".join(f"{i}={n}" for i, n in enumerate([*CLASSES, "background"]))
    return (
        "# datakd scenes (generated test bed)\n\n"
        f"Written by `datakd data scenes --train {train} --val {val} --size {size} --seed {seed}`: "
        f"{train} train / {val} val canvases of {size}x{size} px, 2-8 Fashion-MNIST objects each "
        "(train canvases from its training split, val from its test split), at least half of every object "
        "visible, on smooth-noise backgrounds with unlabelled low-contrast fragments.\n\n"
        "* COCO layout: train2017/, val2017/, annotations/instances_{train,val}2017.json; category ids "
        f"{list(CATEGORY_IDS)} (gapped on purpose), boxes tight around the visible mask, segmentation as "
        "uncompressed RLE of the visible mask, iscrowd 0.\n"
        "* Cityscapes layout: leftImg8bit/{train,val}/scene/, gtFine/{train,val}/scene/*_gtFine_labelTrainIds"
        f".png; train ids {names}; classes.json lists them.\n"
        "* MANIFEST.sha256: every file's digest (`sha256sum -c MANIFEST.sha256`).\n\n"
        f"Objects: {ATTRIBUTION}.\n"
    )


def generate_scenes(
    source: str | Path,
    out: str | Path,
    train: int = 2000,
    val: int = 500,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> SceneSummary:
    """Write the scenes test bed from the Fashion-MNIST IDX files in `source` into `out` (see module doc)."""
    if size < 32:
        raise DatakdError(f"scene canvas size {size} is too small; valid: 32 or more pixels")
    if train < 1 or val < 1:
        raise DatakdError(f"scene counts train={train}, val={val}; valid: at least 1 canvas per split")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.is_dir():
        raise DatakdError(
            f"Fashion-MNIST folder {str(source)!r} does not exist (valid: the four IDX .gz files)"
        )
    start = time.perf_counter()
    pools = {}
    for split, count in (("train", train), ("val", val)):
        arrays = read_split(source, SPLITS[split][0])
        pools[split] = (arrays.images[:, 0], arrays.labels.numpy(), count)
    _prepare(out, overwrite)
    check_writable(out, "scenes output")  # a full or read-only disk: one line before any canvas
    created = not out.exists()
    staging = out / STAGING
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        objects = {}
        for split, (pool, labels, count) in pools.items():
            objects[split] = write_split(staging, split, count, pool, labels, size, seed)
        _write_text(json.dumps([*CLASSES, "background"]) + "\n", staging / "classes.json")
        _write_text(_readme(train, val, size, seed), staging / "README.md")
        write_manifest(staging)
        _install(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)  # gives the space back
        if created:
            shutil.rmtree(out, ignore_errors=True)
        fault = _storage_fault(exc, out, staging, created) if isinstance(exc, OSError) else None
        if fault is None:
            raise
        raise fault from None
    return SceneSummary(out, {"train": train, "val": val}, objects, time.perf_counter() - start)
