"""TST Stage I (spec §1.5), an offline job: fit each meta-encoder to its hand-made op by MSE; store the fit.

`datakd tst fit` runs it before any distillation; the ``tst`` augmenter only reads the file it writes
(`datakd.augmenters.tst.encoder_file`).

For every magnitude op, independently: draw one m ~ U(0, 1) per batch, flip its sign half of the time for
signed ops, take the op's value for bin ⌊10|m|⌋, make the target with the uint8 op (denormalise → op →
renormalise) and regress the encoder's output on the normalised batch onto it (MSE, AdamW lr 1e-3, wd 0.01
for STN / 0 for CN, ExponentialLR γ = 0.999 per iteration). CIFAR: STN 10 epochs, CN 20 epochs, batch 64.

Spatial encoders fill the pixels a warp uncovers with black, exactly as the uint8 targets do (version-2
files; `datakd.augmenters.tst.encoders`), so the exact affine of a translation reproduces its target. An op
whose target equals its input on every bin of the fixed batch (Color on grey images: saturation of a grey
pixel is the pixel) is the identity on this data; the report says so (``identity_on_data``, a warning), since
f_DE then spends probability on an op that cannot change an image.

The fitted encoders go into one file together with a content hash of the fitting settings and the data's
identity (dataset, options, image geometry, normalisation, a digest of the images), so `datakd tst fit`
re-uses a file whose hash matches instead of fitting again. A detection or segmentation dataset is fitted on
square crops of its training images (`dense_as_images`). The file also stores, per op, the seconds spent
and the MSE on a fixed batch before and after fitting (and of doing nothing), so its quality is on record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from datakd.augmenters.tst.encoder_file import (
    FILE_FORMAT,
    FILE_VERSION,
    FILLS,
    FitConfig,
    load_encoders,
    save_encoders,
)
from datakd.augmenters.tst.encoders import SpatialEncoder, black_fill, make_encoder
from datakd.augmenters.tst.ops import AFFINE_OPS, SIGNED, magnitude_value, op_index
from datakd.augmenters.tst.ops import apply_pixel_op as pixel_op
from datakd.config import DataConfig
from datakd.data.base import DatasetBundle, ImageArrays
from datakd.data.build import load_dataset, make_normalizer, train_loader
from datakd.data.eval_loader import EvalLoader
from datakd.data.loaders import Normalizer, derive_seed
from datakd.data.splits import take_subset
from datakd.errors import ConfigError, DatakdError


@dataclass
class FitData:
    """What fitting needs from a dataset: a training loader, the normaliser, a fixed evaluation batch."""

    loader: Any
    normalizer: Normalizer
    eval_images: torch.Tensor
    identity: dict[str, Any]
    device: torch.device

    @property
    def channels(self) -> int:
        return int(self.eval_images.shape[1])


def _subset_size(subset: float | None, total: int) -> int | None:
    if subset is None:
        return None
    n = round(subset * total) if subset < 1 else int(subset)
    if not 1 <= n <= total:
        raise ConfigError(f"tst.fit.subset {subset} selects {n} of {total} training images")
    return n


def _content_digest(bundle: DatasetBundle) -> str:
    digest = hashlib.sha1()
    train = bundle.train
    if isinstance(train, ImageArrays):
        digest.update(train.images.contiguous().numpy().tobytes())
    else:
        for path in train.paths:
            digest.update(f"{Path(path).parent.name}/{Path(path).name}\n".encode())
    digest.update(train.labels.numpy().tobytes())
    return digest.hexdigest()


def prepare_data(data_cfg: DataConfig, fit: FitConfig, device: torch.device) -> FitData:
    """Load the training split the way a run would (crop + flip, normalised) for fitting."""
    cfg = replace(data_cfg, batch_size=fit.batch_size, train_subset=None)
    if fit.image_size is not None:
        cfg = replace(cfg, image_size=fit.image_size)
    bundle, _ = load_dataset(cfg, fit.seed)
    n = _subset_size(fit.subset, len(bundle.train)) or data_cfg.train_subset
    if bundle.extra.get("task", "classification") != "classification":
        bundle = dense_as_images(bundle, n, cfg.image_size, fit.seed)
        cfg = replace(cfg, loader="auto", augment="default", options=dict(cfg.options))
    elif n:
        bundle = replace(bundle, train=take_subset(bundle.train, n, fit.seed))
    normalizer = make_normalizer(bundle, device)
    loader = train_loader(cfg, bundle, normalizer, device, fit.seed)
    augment = bundle.default_augment if cfg.augment == "default" else cfg.augment
    count = min(fit.eval_images, len(bundle.train))
    head = bundle.train.subset(torch.arange(count))
    eval_aug = "imagenet" if augment == "imagenet" else "none"
    evaluator = EvalLoader(head, count, normalizer, device, cfg.workers, cfg.image_size, eval_aug)
    eval_images = next(iter(evaluator)).images
    identity = {
        "dataset": bundle.name,
        "options": dict(cfg.options),
        "val_size": cfg.val_size,
        "num_train": len(bundle.train),
        "channels": int(eval_images.shape[1]),
        "height": int(eval_images.shape[2]),
        "width": int(eval_images.shape[3]),
        "mean": [round(float(v), 6) for v in bundle.mean],
        "std": [round(float(v), 6) for v in bundle.std],
        "augment": augment,
        "crop_padding": cfg.crop_padding,
        "content_sha1": _content_digest(bundle),
    }
    return FitData(loader, normalizer, eval_images, identity, device)


def dense_as_images(bundle: DatasetBundle, n: int | None, size: int, seed: int) -> DatasetBundle:
    """A detection/segmentation split as in-memory size×size crops (shorter side resized to `size`, centre
    crop; `n` images drawn with `seed`, else all): the encoders imitate image ops, which need no targets,
    and their affine matrices are in normalised coordinates, so a fit at `size` serves any image size."""
    from torchvision.transforms.v2 import functional as TF

    from datakd.data.file_loader import decode

    split = bundle.train
    paths = [r.path for r in split.records] if hasattr(split, "records") else list(split.images)
    order = torch.arange(len(paths))
    if n:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    crops = [
        TF.center_crop(TF.resize(decode(paths[i]), [size], antialias=True), [size, size])
        for i in order.tolist()
    ]
    arrays = ImageArrays(torch.stack(crops), torch.zeros(len(crops), dtype=torch.int64))
    extra = {**bundle.extra, "task": "classification"}
    return replace(
        bundle, train=arrays, test=arrays, image_size=(size, size), default_augment="crop_flip", extra=extra
    )


def content_hash(fit: FitConfig, identity: dict[str, Any]) -> str:
    """Hash of everything that determines a fit (settings + data), the cache key of an encoders file."""
    text = json.dumps(
        {"version": FILE_VERSION, "fit": dataclasses.asdict(fit), "data": identity}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _target(normalizer: Normalizer, images: torch.Tensor, op: str, value: float) -> torch.Tensor:
    return normalizer(pixel_op(normalizer.inverse(images), op, value)).contiguous()


def _eval_grid(op: str) -> list[float]:
    """Bin-centre magnitudes, both signs for signed ops: the fixed magnitudes evaluation uses."""
    centres = [(k + 0.5) / 10 for k in range(10)]
    return centres + [-m for m in centres] if op in SIGNED else centres


class _Evaluator:
    """MSE of an encoder on the fixed batch over all bins (targets computed once)."""

    def __init__(self, data: FitData, op: str) -> None:
        h, w = data.eval_images.shape[-2:]
        self.cases = []
        for m in _eval_grid(op):
            target = _target(data.normalizer, data.eval_images, op, magnitude_value(op, m, h, w))
            self.cases.append((m, target))
        self.images = data.eval_images

    def identity_mse(self) -> float:
        return sum(F.mse_loss(self.images, t).item() for _, t in self.cases) / len(self.cases)

    def is_identity(self) -> bool:
        """True if the hand-made op leaves every image of the batch unchanged at every bin."""
        return all(torch.equal(self.images, t) for _, t in self.cases)

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module) -> float:
        total = 0.0
        for m, target in self.cases:
            total += F.mse_loss(encoder(self.images, m, random=False), target).item()
        return total / len(self.cases)


def fit_op(
    op: str, data: FitData, fit: FitConfig, say: Callable[[str], None] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fit one meta-encoder; returns it (frozen, eval) and its report."""
    index = op_index(op)
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(fit.seed, index))
        encoder = make_encoder(op, data.channels).to(data.device)
        if isinstance(encoder, SpatialEncoder):
            encoder.set_fill(black_fill(data.normalizer, data.channels, data.device))
        evaluator = _Evaluator(data, op)
        report: dict[str, Any] = {
            "op": op,
            "kind": "STN" if op in AFFINE_OPS else "CN",
            "mse_identity": evaluator.identity_mse(),
            "identity_on_data": evaluator.is_identity(),
            "mse_init": evaluator(encoder),
        }
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=fit.lr, weight_decay=fit.weight_decay_for(op))
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=fit.gamma)
        draws = torch.Generator().manual_seed(derive_seed(fit.seed, index, 0x51A6E1))
        height, width = data.eval_images.shape[-2:]
        losses: list[torch.Tensor] = []
        started = time.perf_counter()
        budget = fit.max_iters if fit.max_iters is not None else math.inf
        encoder.train()
        for epoch in range(fit.epochs_for(op)):
            for batch in data.loader.epoch(epoch):
                if len(losses) >= budget:
                    break
                m = float(torch.rand(1, generator=draws))
                if op in SIGNED and int(torch.randint(2, (1,), generator=draws)):
                    m = -m
                target = _target(data.normalizer, batch.images, op, magnitude_value(op, m, height, width))
                loss = F.mse_loss(encoder(batch.images, m, random=False), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.detach())
        seconds = time.perf_counter() - started
        encoder.eval()
        encoder.requires_grad_(False)
        tail = max(1, len(losses) // 10)
        report.update(
            {
                "iters": len(losses),
                "seconds": seconds,
                "mse_final": evaluator(encoder),
                "train_mse_last": float(torch.stack(losses[-tail:]).mean()) if losses else float("nan"),
            }
        )
    if say is not None and report["identity_on_data"]:
        say(
            f"tst fit warning: {op} is the identity on this data (its target equals its input at every "
            f"bin); f_DE's probability on it changes nothing"
        )
    if say is not None:
        say(
            f"tst fit {op:<10} {report['kind']}  {report['iters']} iters  {seconds:.1f}s  "
            f"MSE {report['mse_init']:.4f} -> {report['mse_final']:.4f} "
            f"(identity {report['mse_identity']:.4f})"
        )
    return encoder, report


def fit_encoders(data: FitData, fit: FitConfig, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit every op of `fit.ops`; returns the encoders-file payload (see `save_encoders`)."""
    encoders, reports = {}, {}
    for op in fit.ops:
        encoder, report = fit_op(op, data, fit, say)
        encoders[op] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
        reports[op] = report
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "fill": FILLS[FILE_VERSION],
        "hash": content_hash(fit, data.identity),
        "fit": dataclasses.asdict(fit),
        "data": data.identity,
        "encoders": encoders,
        "report": reports,
    }


def fit_or_load(
    path: str | Path,
    data_cfg: DataConfig,
    fit: FitConfig,
    device: torch.device,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """The encoders for (data, fit): re-used from `path` when its hash matches, else fitted and saved.

    Returns (payload, cached).
    """
    data = prepare_data(data_cfg, fit, device)
    wanted = content_hash(fit, data.identity)
    path = Path(path)
    if path.is_file() and not force:
        try:
            stored = load_encoders(path)
        except DatakdError:
            stored = {}
        if stored.get("hash") == wanted:
            return stored, True
        if say is not None:
            say(
                f"tst fit: {path} holds a fit of other settings or data "
                f"(hash {stored.get('hash')}, wanted {wanted}); fitting again"
            )
    payload = fit_encoders(data, fit, say)
    save_encoders(payload, path)
    return payload, False


def format_report(payload: dict[str, Any]) -> str:
    """The per-op table: kind, iterations, seconds, MSE of doing nothing / before / after fitting."""
    lines = [
        f"TST encoders {payload['hash']}  data {payload['data']['dataset']} "
        f"({payload['data']['num_train']} images, {payload['data']['height']}x{payload['data']['width']})",
        f"{'op':<11}{'kind':<6}{'iters':>7}{'seconds':>9}{'MSE id':>10}{'MSE init':>10}{'MSE fit':>10}"
        f"{'train MSE':>11}",
    ]
    total = 0.0
    for op, r in payload["report"].items():
        total += r["seconds"]
        lines.append(
            f"{op:<11}{r['kind']:<6}{r['iters']:>7}{r['seconds']:>9.1f}{r['mse_identity']:>10.4f}"
            f"{r['mse_init']:>10.4f}{r['mse_final']:>10.4f}{r['train_mse_last']:>11.4f}"
        )
    identity = [op for op, r in payload["report"].items() if r.get("identity_on_data")]
    if identity:
        lines.append(f"identity on this data (target = input at every bin): {', '.join(identity)}")
    lines.append(f"total {total:.1f}s  (MSE id = doing nothing; MSE on a fixed batch over all bins)")
    return "\n".join(lines)
