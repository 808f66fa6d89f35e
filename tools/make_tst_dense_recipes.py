"""Write TST's detection and segmentation recipes from the baselines that tools/make_dense_recipes.py writes.

    python tools/make_tst_dense_recipes.py   # recipes/{coco,cityscapes}/tst/, recipes/testbed/tst_*

Each TST recipe is its baseline (schedule, data, models, loss: TST's Stage III is the baseline's loss) plus
the ``tst`` augmenter and the ``tst_search`` event, so the two can only differ by TST. Stage II (seed 000
l.360, 362): detection at epochs 6 and 12 of 24 for one epoch each; segmentation at iterations 7,500 and
15,000 of 80,000 for 1,250 iterations, i.e. at epochs 40 and 81 of 430 (batch 16 over 2,975 images) for a
pass of 1,250 × 16 = 20,000 images (`pass_images`). The test bed scales both to its 24 epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Table 3 (000 l.143-156): AP, AP50, AP75, APS, APM, APL of the "Ours" rows.
TABLE3 = {
    "cmrcnn_x101-frcnn_r50": {
        "kd": (40.5, 62.4, 44.1, 24.0, 44.6, 52.1),
        "kd_mimic": (42.2, 63.4, 46.1, 24.1, 46.5, 55.6),
    },
    "retinanet_x101-retinanet_r50": {
        "kd": (39.9, 59.6, 42.8, 23.3, 43.8, 53.3),
        "kd_mimic": (40.5, 60.0, 43.4, 23.9, 44.5, 54.4),
    },
    "fcos_r101-fcos_r50": {
        "kd": (40.1, 58.3, 43.2, 23.9, 44.1, 51.6),
        "kd_mimic": (41.0, 60.0, 44.3, 24.9, 45.0, 51.8),
    },
}
ROWS = {"kd": "Ours (KD)", "kd_mimic": "Ours (KD+mimic)"}
AP_KEYS = ("map", "ap50", "ap75", "aps", "apm", "apl")
# Stage I on COCO / Cityscapes: square 128-px crops of a 5,000-image subset (COCO) or the whole split.
COCO_FIT = {"epochs_spatial": 5, "epochs_color": 10, "batch_size": 64, "subset": 5000, "image_size": 128}
CITYSCAPES_FIT = {"epochs_spatial": 5, "epochs_color": 10, "batch_size": 64, "image_size": 128}
TESTBED_FIT = {"epochs_spatial": 10, "epochs_color": 10, "batch_size": 64, "image_size": 96}


def augmenter(encoders: str, fit: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tst", "encoders": encoders, "num_ops": 4, "rbd_mode": "code", "lr": 0.01, "fit": fit}


def load(path: Path) -> tuple[list[str], dict[str, Any]]:
    text = path.read_text()
    return [line[2:] for line in text.splitlines() if line.startswith("# ")], yaml.safe_load(text)


def dump(path: Path, header: str, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.strip().splitlines())
    path.write_text(comment + yaml.safe_dump(values, sort_keys=False, width=110))


def coco() -> None:
    for pair, rows in TABLE3.items():
        for arm, numbers in rows.items():
            _, values = load(ROOT / "recipes" / "coco" / "tst_table3" / pair / f"{arm}.yaml")
            values["name"] = f"coco-{pair}-tst_{arm}"
            values["augmenter"] = augmenter("tst_encoders/coco.pt", COCO_FIT)
            values["events"] = [{"name": "tst_search", "at": [6, 12], "epochs": 1}]
            values["reference"] = {"paper": "000", "table": 3, "pair": pair, "row": ROWS[arm]} | dict(
                zip(AP_KEYS, numbers)
            )
            path = f"recipes/coco/tst/{pair}/tst_{arm}.yaml"
            note = (
                "\nCascade Mask R-CNN X101 in the paper: torchvision has no Cascade R-CNN, so Mask R-CNN "
                "X101-64x4d stands in\n(a weaker teacher; Stage II scores the student's proposals with its "
                "box head, so no masks are needed)."
                if pair.startswith("cmrcnn")
                else ""
            )
            header = (
                f"TST (seed 000) Table 3, {pair}: {ROWS[arm]} =\nrecipes/coco/tst_table3/{pair}/{arm}.yaml + "
                "TST (one-affine f_DE, App. D.1).\nStage II at epochs 6 and 12 for one epoch (l.360)."
                + note
                + "\n  datakd tst fit --config "
                + path
                + " --data-root COCO_ROOT --device cuda"
                + "\n  datakd distill --config "
                + path
                + " --data-root COCO_ROOT --device cuda \\\n"
                + f"      --teacher-checkpoint runs/coco/{pair}/teacher/last.pt"
            )
            dump(ROOT / path, header, values)


def cityscapes() -> None:
    _, values = load(ROOT / "recipes" / "cityscapes" / "tst_table4" / "seg_kd.yaml")
    values["name"] = "cityscapes-pspnet-tst"
    values["augmenter"] = augmenter("tst_encoders/cityscapes.pt", CITYSCAPES_FIT)
    values["events"] = [{"name": "tst_search", "at": [40, 81], "epochs": 1, "pass_images": 20000}]
    values["reference"] = {"paper": "000", "table": 4, "row": "Ours", "miou": 76.55}
    path = "recipes/cityscapes/tst/pspnet_r101-pspnet_r18.yaml"
    header = (
        "TST (seed 000) Table 4, PSPNet-R101 -> PSPNet-R18 on Cityscapes (paper: 76.55 mIoU) = "
        "recipes/cityscapes/tst_table4/seg_kd.yaml + TST.\nStage II at iterations 7,500 and 15,000 of 80,000 "
        "(epochs 40 and 81 of 430) for 1,250 iterations (pass_images 20,000 at batch 16)."
        "\n  datakd tst fit --config " + path + " --data-root CITYSCAPES_ROOT --device cuda"
        "\n  datakd distill --config " + path + " --data-root CITYSCAPES_ROOT --device cuda \\\n"
        "      --teacher-checkpoint runs/cityscapes/pspnet_teacher/last.pt"
    )
    dump(ROOT / path, header, values)


def testbed() -> None:
    for base in (
        "retinanet_kd",
        "retinanet_kd_mimic",
        "fasterrcnn_kd",
        "fasterrcnn_kd_mimic",
        "fcos_kd_mimic",
    ):
        source = ROOT / "recipes" / "testbed" / f"{base}.yaml"
        _, values = load(source)
        values["name"] = f"testbed-tst_{base}"
        values["augmenter"] = augmenter("tst_encoders/testbed-coco.pt", TESTBED_FIT)
        epochs = int(values["epochs"])
        values["events"] = [{"name": "tst_search", "at": [6 * epochs // 24, 12 * epochs // 24], "epochs": 1}]
        path = f"recipes/testbed/tst_{base}.yaml"
        header = (
            f"Test-bed TST on detection: recipes/testbed/{base}.yaml + TST\n"
            "(Stage II at epochs 6 and 12 of 24).\n"
            f"  datakd tst fit --config {path} --data-root data/scenes\n"
            f"  datakd distill --config {path} --data-root data/scenes --out runs/testbed/tst_{base}"
        )
        dump(ROOT / path, header, values)
    _, values = load(ROOT / "recipes" / "testbed" / "pspnet_seg_kd.yaml")
    values["name"] = "testbed-tst_pspnet_seg_kd"
    values["augmenter"] = augmenter("tst_encoders/testbed-cityscapes.pt", TESTBED_FIT)
    epochs = int(values["epochs"])
    # 7,500 / 80,000 and 15,000 / 80,000 of the run; a pass of 1,250 / 80,000 of it, in images (2,000 train).
    at = [round(epochs * 7500 / 80000), round(epochs * 15000 / 80000)]
    values["events"] = [
        {"name": "tst_search", "at": at, "epochs": 1, "pass_images": round(epochs * 2000 * 1250 / 80000)}
    ]
    path = "recipes/testbed/tst_pspnet_seg_kd.yaml"
    header = (
        "Test-bed TST on segmentation: recipes/testbed/pspnet_seg_kd.yaml + TST, Stage II at 7,500 and\n"
        "15,000 of 80,000 iterations for 1,250 iterations, scaled to the run (2,000 training canvases).\n"
        f"  datakd tst fit --config {path} --data-root data/scenes\n"
        f"  datakd distill --config {path} --data-root data/scenes --out runs/testbed/tst_pspnet_seg_kd"
    )
    dump(ROOT / path, header, values)


def main() -> None:
    coco()
    cityscapes()
    testbed()


if __name__ == "__main__":
    main()
