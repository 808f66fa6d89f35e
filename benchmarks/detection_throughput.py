"""Detection training throughput of datakd's trainer against torchvision's reference detection loop.

Both sides train the same detector (same architecture and initial weights) on the same scenes test bed with
the same batch size and loader workers, in one process, timed *interleaved* (a few steps of each in turn,
for several rounds), so load from other processes hits them alike:

* datakd: the real trainer (`build_trainer` + `Trainer.train_step`) with the recipe's `detector` loss,
  fed by the dense loader (datakd/data/dense: PNG decode + seeded joint flip on workers, or the in-memory
  cache the loader turns on for small splits).
* reference: what torchvision's `references/detection/train.py` does: `torchvision.datasets.CocoDetection`
  wrapped for transforms v2 (PIL decode, RandomHorizontalFlip, ToImage/ToDtype, SanitizeBoundingBoxes), a
  DataLoader with a list collate, then `loss = sum(model(images, targets).values())`, backward, SGD step.

datakd is timed twice: as a user gets it (its loader decodes a small split once and keeps it in memory) and
with that cache off (decoding every image every step, as the reference does).

Also times COCO mAP evaluation of the student (`DetectionTask.evaluate`: inference + pycocotools) per 100
validation images. Prints one JSON object (images/s of each side, `ratio` = datakd ÷ reference, eval
seconds) and a markdown line on stderr.

    python benchmarks/detection_throughput.py                      # RetinaNet tiny, 96-px test bed, CPU
    python benchmarks/detection_throughput.py --model fasterrcnn_r18_fpn_tiny --rounds 4
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakd.config import config_from_dict
from datakd.data.dense.scenes import generate_scenes
from datakd.engine.build import build_trainer

REPO = Path(__file__).resolve().parents[1]
Stepper = Callable[[int], float]  # run n steps, return the images trained on


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", help="a scenes test bed (default: generate one in a temporary folder)")
    parser.add_argument("--fmnist", default=str(REPO.parent / "shared" / "data" / "fashion-mnist"))
    parser.add_argument("--train", type=int, default=400, help="canvases to generate (no --data-root)")
    parser.add_argument("--model", default="retinanet_r18_fpn_tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps of each side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def datakd_stepper(
    root: Path, out: Path, args: argparse.Namespace, cache: bool | None
) -> tuple[Stepper, Any]:
    """The trainer's step on its own loader; `cache` None is what a user gets (decode once when the split
    fits in memory), False decodes every image every step as the reference does."""
    cfg = config_from_dict(
        {
            "name": "detection-throughput",
            "task": "detection",
            "device": args.device,
            "out": str(out),
            "epochs": 1000,
            "quiet": True,
            "data": {
                "dataset": "coco",
                "root": str(root),
                "batch_size": args.batch_size,
                "workers": args.workers,
                "options": {"cache": cache},
            },
            "student": {"name": args.model},
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
            "schedule": {"name": "constant"},
            "loss": {"detector": {"weight": 1.0}},
            "engine": {"tensorboard": False},
        }
    )
    trainer = build_trainer(cfg, "train", overwrite=True)
    trainer.student.train()

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            yield from trainer.loader.epoch(epoch)
            epoch += 1

    stream = batches()

    def step(n: int) -> float:
        images = 0
        for _ in range(n):
            batch = next(stream)
            trainer.train_step(batch)
            trainer.global_step += 1
            images += len(batch)
        return images

    return step, trainer


def reference_stepper(root: Path, model: torch.nn.Module, args: argparse.Namespace) -> Stepper:
    """torchvision's references/detection loop, on the same COCO-layout files."""
    from torchvision import datasets
    from torchvision.transforms import v2

    transforms = v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(),
        ]
    )
    dataset = datasets.CocoDetection(
        str(root / "train2017"), str(root / "annotations" / "instances_train2017.json"), transforms=transforms
    )
    dataset = datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels", "image_id"))
    # the reference maps COCO's category ids to contiguous labels too (its `coco_remove_images_without_
    # annotations` and label handling assume 91 classes; ours are 1..K)
    ids = sorted(dataset.coco.getCatIds())
    contiguous = torch.zeros(max(ids) + 1, dtype=torch.long)
    contiguous[torch.tensor(ids)] = torch.arange(1, len(ids) + 1)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=lambda items: tuple(zip(*items)),
        persistent_workers=args.workers > 0,
    )
    device = torch.device(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()

    def batches() -> Iterator[Any]:
        while True:
            yield from loader

    stream = batches()

    def step(n: int) -> float:
        images_seen = 0
        for _ in range(n):
            images, targets = next(stream)
            images = [image.to(device) for image in images]
            targets = [
                {"boxes": t["boxes"].to(device), "labels": contiguous[t["labels"]].to(device)}
                for t in targets
            ]
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images_seen += len(images)
        return images_seen

    return step


def timed(step: Stepper, n: int, device: torch.device) -> tuple[float, float]:
    start = time.perf_counter()
    images = step(n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        root = Path(args.data_root) if args.data_root else work_dir / "bed"
        if not args.data_root:
            generate_scenes(args.fmnist, root, train=args.train, val=100, seed=0)
        ours, trainer = datakd_stepper(root, work_dir / "run", args, cache=None)
        uncached, _ = datakd_stepper(root, work_dir / "run_uncached", args, cache=False)
        reference_model = copy.deepcopy(trainer.student_module)  # same initial weights
        reference = reference_stepper(root, reference_model, args)
        steppers = {"datakd": ours, "datakd_no_cache": uncached, "reference": reference}
        for stepper in steppers.values():
            stepper(2)  # warm-up: worker start, first allocations, the cache's one decode
        totals = {name: [0.0, 0.0] for name in steppers}
        for _ in range(args.rounds):
            for name, stepper in steppers.items():
                images, seconds = timed(stepper, args.steps, device)
                totals[name][0] += images
                totals[name][1] += seconds
        start = time.perf_counter()
        scores = trainer.task.evaluate(trainer.student_module, trainer.eval_loader)
        eval_seconds = time.perf_counter() - start
        eval_images = len(trainer.bundle.test)
    rates = {name: images / seconds for name, (images, seconds) in totals.items()}
    result = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "steps_per_side": args.steps * args.rounds,
        "datakd_images_per_sec": rates["datakd"],
        "datakd_no_cache_images_per_sec": rates["datakd_no_cache"],
        "reference_images_per_sec": rates["reference"],
        "ratio": rates["datakd"] / rates["reference"],
        "ratio_no_cache": rates["datakd_no_cache"] / rates["reference"],
        "eval_seconds_per_100_images": 100.0 * eval_seconds / max(eval_images, 1),
        "eval_map": scores["map"],
    }
    print(json.dumps(result))
    print(
        f"| {args.model} | datakd {rates['datakd']:.1f} img/s ({result['ratio']:.2f}x) | no cache "
        f"{rates['datakd_no_cache']:.1f} img/s ({result['ratio_no_cache']:.2f}x) | reference "
        f"{rates['reference']:.1f} img/s | mAP eval {result['eval_seconds_per_100_images']:.2f} s/100 img |",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
