"""The bad-input catalogue (docs/reliability.md): every bad input a user can produce, fed through the real
CLI, ends in one line that names the bad value and what is valid — no traceback — and leaves the files of
an earlier run exactly as they were."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datakd.cli import main
from datakd.engine.build import build_trainer
from datakd.models import create
from tests.conftest import write_idx
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


def recipe_values(**changes) -> dict:
    values = tiny_config(Path("unused"), **changes).to_dict()
    values.pop("out")
    return values


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, idx_root: Path) -> dict[str, Path]:
    """An earlier finished run, its recipe, a valid Fashion-MNIST folder and a valid CIFAR-10 folder."""
    root = tmp_path_factory.mktemp("bad-inputs")
    earlier = root / "earlier"
    small = {"train_subset": 128, "test_subset": 64}
    build_trainer(tiny_config(earlier, epochs=1, data=small), "train").fit()
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_values(epochs=1, data=small)))
    fmnist = root / "fmnist-recipe.yaml"
    data = {"dataset": "fashion-mnist", "options": {"pad_to_32": False, "rgb": False}, **small}
    fmnist.write_text(yaml.safe_dump(recipe_values(epochs=1, data=data)))
    cifar = root / "cifar-recipe.yaml"
    cifar_data = {"dataset": "cifar10", "train_subset": None, "test_subset": None}
    cifar.write_text(yaml.safe_dump(recipe_values(epochs=1, data=cifar_data, student={"kwargs": {}})))
    make_cifar10(root / "cifar")
    other_classes = root / "resnet8-100-classes.pt"
    model = create("resnet8", 100, in_channels=1)
    torch.save({"model": model.state_dict(), "model_name": "resnet8", "num_classes": 100}, other_classes)
    return {
        "root": root,
        "earlier": earlier,
        "recipe": recipe,
        "fmnist_recipe": fmnist,
        "cifar_recipe": cifar,
        "idx": idx_root,
        "cifar": root / "cifar",
        "other_classes": other_classes,
    }


def make_cifar10(root: Path, n: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3][:n]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- how each case is set up
# A case returns the CLI arguments; `w` is the world fixture, `tmp` a fresh folder for this case.
def config_case(*overrides: str) -> Callable[[dict, Path], list[str]]:
    def args(w: dict, tmp: Path) -> list[str]:
        return ["train", "--config", str(w["recipe"]), "--out", str(w["earlier"]), "--overwrite", *overrides]

    return args


def idx_case(change: Callable[[Path], None]) -> Callable[[dict, Path], list[str]]:
    def args(w: dict, tmp: Path) -> list[str]:
        data = copy_tree(w["idx"], tmp / "fmnist")
        change(data)
        return [
            "train",
            "--config",
            str(w["fmnist_recipe"]),
            "--data-root",
            str(data),
            "--out",
            str(w["earlier"]),
            "--overwrite",
        ]

    return args


def cifar_case(change: Callable[[Path], None]) -> Callable[[dict, Path], list[str]]:
    def args(w: dict, tmp: Path) -> list[str]:
        data = copy_tree(w["cifar"], tmp / "cifar")
        change(data / "cifar-10-batches-py")
        return [
            "train",
            "--config",
            str(w["cifar_recipe"]),
            "--data-root",
            str(data),
            "--out",
            str(w["earlier"]),
            "--overwrite",
        ]

    return args


def distill_case(teacher: Callable[[dict], Path], *overrides: str) -> Callable[[dict, Path], list[str]]:
    def args(w: dict, tmp: Path) -> list[str]:
        return [
            "distill",
            "--config",
            str(w["recipe"]),
            "--teacher-checkpoint",
            str(teacher(w)),
            "--out",
            str(tmp / "student"),
            "loss.kd.weight=0.9",
            *overrides,
        ]

    return args


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def truncate_gzip_payload(folder: Path) -> None:
    truncate(folder / "train-images-idx3-ubyte.gz")


def wrong_magic(folder: Path) -> None:
    path = folder / "train-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[2] = 0x0D  # float32 instead of uint8
    path.write_bytes(gzip.compress(bytes(data)))


def labels_out_of_range(folder: Path) -> None:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(path.read_bytes())[8:], dtype=np.uint8).copy()
    labels[3] = 12
    write_idx(path, labels)


def empty_root(folder: Path) -> None:
    for file in list(folder.iterdir()):
        file.unlink()


def cifar_labels_out_of_range(folder: Path) -> None:
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    batch[b"labels"][1] = 10
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))


def resume_case(change: Callable[[Path], None], *extra: str) -> Callable[[dict, Path], list[str]]:
    def args(w: dict, tmp: Path) -> list[str]:
        run = copy_tree(w["earlier"], tmp / "run")
        change(run)
        return ["train", "--config", str(w["recipe"]), "--out", str(run), *extra]

    return args


CASES: dict[str, tuple[Callable[[dict, Path], list[str]], str]] = {
    # recipe values: wrong type, out of range, unknown keys and names
    "negative-lr": (config_case("optim.lr=-1"), r"optim\.lr=-1\.0 is out of range; valid: a number > 0"),
    "zero-batch": (config_case("data.batch_size=0"), r"data\.batch_size=0 .*valid: a positive integer"),
    "negative-batch": (config_case("data.batch_size=-5"), r"data\.batch_size=-5 .*valid: a positive"),
    "momentum-above-1": (config_case("optim.momentum=2"), r"momentum=2\.0 .*valid: a number in \[0, 1"),
    "zero-epochs": (config_case("epochs=0"), r"epochs=0 .*valid: a positive integer"),
    "lr-not-a-number": (config_case("optim.lr=fast"), r"optim\.lr: expected a number, got 'fast'"),
    "batch-not-an-integer": (
        config_case("data.batch_size=1.5"),
        r"data\.batch_size: expected an integer, got 1\.5",
    ),
    "unknown-key": (
        config_case("data.batch_sise=8"),
        r"'batch_sise' \(did you mean 'batch_size'\?\); valid choices: .*batch_size",
    ),
    "unknown-section": (config_case("optimizer.lr=0.1"), r"'optimizer' \(did you mean 'optim'\?\)"),
    "unknown-model": (config_case("student.name=resnet9000"), r"'resnet9000'.*valid choices: .*resnet8"),
    "unknown-dataset": (config_case("data.dataset=cifar1000"), r"'cifar1000'.*valid choices: .*cifar10"),
    "unknown-preempt-signal": (
        config_case("engine.preempt_signals=[SIGKILL]"),
        r"'SIGKILL'; valid: a list of SIGTERM",
    ),
    # data files
    "idx-truncated": (idx_case(truncate_gzip_payload), r"train-images-idx3-ubyte\.gz.*truncated or corrupt"),
    "idx-wrong-magic": (idx_case(wrong_magic), r"train-labels-idx1-ubyte: not a uint8 IDX.*valid: 000008"),
    "idx-labels-out-of-range": (idx_case(labels_out_of_range), r"holds label 12; valid: 0\.\.9"),
    "empty-data-root": (idx_case(empty_root), r"train-images-idx3-ubyte\(\.gz\) not found in"),
    "missing-data-root": (
        idx_case(lambda folder: shutil.rmtree(folder)),
        r"data root .*fmnist' .*does not exist",
    ),
    "cifar-truncated": (
        cifar_case(lambda folder: truncate(folder / "data_batch_3")),
        r"data_batch_3' is not a readable pickle .*truncated or corrupt",
    ),
    "cifar-labels-out-of-range": (cifar_case(cifar_labels_out_of_range), r"hold label 10; valid: 0\.\.9"),
    # models against the data and each other
    "images-wrong-for-model": (
        config_case("student.kwargs={}"),
        r"student 'resnet8' cannot take the 1×28×28 .*images of 'quickstart'.*in_channels=1",
    ),
    "teacher-other-architecture": (
        distill_case(lambda w: w["earlier"] / "last.pt", "teacher.name=resnet20"),
        r"resnet20",
    ),
    "teacher-other-class-count": (
        distill_case(lambda w: w["other_classes"]),
        r"trained for 100 classes but this dataset has 10",
    ),
    "teacher-missing": (
        distill_case(lambda w: w["root"] / "nope.pt"),
        r"checkpoint '.*nope\.pt' does not exist",
    ),
    # run directories
    "resume-truncated-last": (
        resume_case(lambda run: truncate(run / "last.pt"), "--resume"),
        r"last\.pt' cannot be read",
    ),
    "resume-empty-dir": (
        resume_case(empty_root, "--resume"),
        r"holds no last\.pt to continue; valid: .*--resume auto",
    ),
    "out-holds-finished-run": (
        resume_case(lambda run: None),
        r"already holds a finished run \(.*summary\.json.*\); pass --resume .*--overwrite",
    ),
    "resume-and-overwrite": (
        resume_case(lambda run: None, "--resume", "--overwrite"),
        r"--resume and --overwrite contradict",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case: str, world: dict, tmp_path: Path, capsys) -> None:
    make_args, pattern = CASES[case]
    args = make_args(world, tmp_path)
    before = snapshot(world["earlier"])
    touched = Path(args[args.index("--out") + 1])
    touched_before = snapshot(touched) if touched.exists() else None
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"datakd {args[0]}: error: "), err
    assert re.search(pattern, err), err
    assert snapshot(world["earlier"]) == before
    if touched_before is not None:
        assert snapshot(touched) == touched_before
    elif touched.exists():
        assert not any(touched.iterdir()), f"a failed run wrote into {touched}"


def test_issue_examples_in_a_real_process(world: dict, tmp_path: Path) -> None:
    """A truncated IDX file used to end in an EOFError traceback (issue 18); now one line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    data = copy_tree(world["idx"], tmp_path / "fmnist")
    truncate_gzip_payload(data)
    runs = [["--config", str(world["fmnist_recipe"]), "--data-root", str(data), "--out", str(tmp_path / "b")]]
    for extra in runs:
        result = subprocess.run(
            [sys.executable, "-m", "datakd", "train", *extra, "--quiet"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("datakd train: error: "), result.stderr
