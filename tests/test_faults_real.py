"""Faults made for real, not raised by a monkeypatch: a full tmpfs, a read-only mount, an unprivileged user,
an address-space limit, an image deleted or truncated while the worker loader reads it.

Where a test arranges *when* a fault strikes (fill the disk right before one writer runs), the failure
itself still comes from the kernel. Mounting needs root (CI runs as root); without it those tests skip.
Every mount is undone in a `finally`. The CUDA out-of-memory test injects the error: no real one can be
made on a machine without a GPU, and it takes the same code path as the CPU's real one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import datakd.engine.trainer as trainer_module
from datakd.checkpoint import load_checkpoint
from datakd.cli import main
from datakd.engine.metrics import MetricsCSV, TensorBoardLog
from datakd.engine.trainer import Trainer
from datakd.faults import OUT_OF_MEMORY_EXIT_CODE, STORAGE_EXIT_CODE
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------------------------- helpers
def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(result.stderr.strip() or f"mount {' '.join(args)} failed")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach lazily


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at `path`, unmounted whatever happens; skips when mounting is not allowed."""
    if not IS_ROOT:
        pytest.skip("mounting a size-limited tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    except (OSError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield path
    finally:
        _umount(path)


def fill(mount: Path) -> Path:
    """Fill the filesystem at `mount` to the last byte; delete the returned file to give the space back."""
    ballast = mount / "ballast"
    chunk = b"\0" * (1 << 16)
    with open(ballast, "ab", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 1):  # the tail that no 64 KiB chunk fitted
            while True:
                try:
                    handle.write(b"\0" * size)
                except OSError:
                    break
    return ballast


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "the resumed run's weights differ"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny 2-epoch run (512 Fashion-MNIST images, resnet8) as a recipe file for the CLI."""
    values = tiny_config(Path("unused")).to_dict()
    values.pop("out")
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, for comparing resumed runs with (same process, same thread count)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--config", str(recipe), "--out", str(out), "--quiet"]) == 0
    return out / "last.pt"


# ----------------------------------------------------------------------------------------------- disk full
def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_finishes_the_run(
    recipe: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's scenario as a user meets it: epoch 1's last.pt and best.pt fit, epoch 2's do not."""
    with tmpfs(tmp_path / "disk", "1800k") as disk:
        out = disk / "run"
        args = ["train", "--config", str(recipe), "--out", str(out), "--quiet"]
        code, err = run_cli(args, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE
        assert f"cannot write {str(out / 'best.pt')!r}: No space left on device (errno 28)" in line
        assert "the previous best.pt is intact" in line and "--resume" in line
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
        assert load_checkpoint(out / "best.pt")["epoch"] == 1
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        _mount("-o", "remount,size=16m", str(disk))  # space freed
        code, err = run_cli([*args, "--resume"], capsys)
        assert code == 0, err
        assert_same_weights(reference, out / "last.pt")


def _fill_before(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, disk: Path, call: int,
                 when: Callable[..., bool] = lambda *a, **k: True) -> dict[str, Any]:  # fmt: skip
    """Wrap `owner.name` so that right before its `call`-th qualifying call the disk is filled: the writer
    then meets a real ENOSPC. Returns what the run directory held at that moment and the ballast."""
    original = getattr(owner, name)
    state: dict[str, Any] = {"calls": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            state["calls"] += 1
            if state["calls"] == call:
                state["before"] = snapshot(disk / "run")
                state["ballast"] = fill(disk)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return state


WRITERS = {
    # writer: (owner, attribute, qualifying call, which call, the file named)
    "metrics.csv": (MetricsCSV, "write", None, 2, "metrics.csv"),
    "summary.json": (trainer_module, "write_json", None, 1, "summary.json"),
    # the first events the writer flushes: later ones fill the slack of the file's last tmpfs page
    "tensorboard": (TensorBoardLog, "__init__", None, 1, "tb"),
    "last.pt": (trainer_module, "atomic_save", lambda obj, path: Path(path).name == "last.pt", 2, "last.pt"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_on_every_run_writer(
    writer: str,
    recipe: Path,
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner, name, when, call, named = WRITERS[writer]
    with tmpfs(tmp_path / "disk", "16m") as disk:
        out = disk / "run"
        state = _fill_before(monkeypatch, owner, name, disk, call, when or (lambda *a, **k: True))
        args = ["train", "--config", str(recipe), "--out", str(out), "--quiet", "engine.tensorboard=true"]
        code, err = run_cli(args, capsys)
        line = one_line(err)
        assert code == STORAGE_EXIT_CODE, line
        assert f"cannot write {str(out / named)!r}"[:-1] in line and "No space left on device" in line
        for path, data in state["before"].items():  # everything written before is intact
            now = (out / path).read_bytes()
            assert now[: len(data)] == data if path.startswith("tb/") else now == data, path
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        monkeypatch.undo()
        state["ballast"].unlink()  # space freed
        code, err = run_cli([*args, "--resume", "auto"], capsys)
        assert code == 0, err
        assert yaml.safe_load((out / "summary.json").read_text())["status"] == "finished"
        assert_same_weights(reference, out / "last.pt")


# ------------------------------------------------------------------------------- read-only, no permission
def test_a_read_only_out_fails_at_start(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = {"n": 0}
    original = Trainer.train_step

    def step(self: Trainer, batch: Any) -> None:
        steps["n"] += 1
        original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    with tmpfs(tmp_path / "ro", "1m") as disk:
        (disk / "old").mkdir()
        _mount("-o", "remount,ro", str(disk))
        created_in = f"(it would be created in {str(disk)!r})"
        for out, where in ((disk / "old", ""), (disk / "new" / "run", created_in)):
            code, err = run_cli(["train", "--config", str(recipe), "--out", str(out), "--quiet"], capsys)
            line = one_line(err)
            assert code == STORAGE_EXIT_CODE
            assert f"run directory {str(out)!r} is not writable" in line and "Read-only file system" in line
            assert where in line
    assert steps["n"] == 0  # not a single step trained before the check


SETPRIV = shutil.which("setpriv")
NO_DAC = "-dac_override,-dac_read_search"  # root without these capabilities obeys permission bits


def _cli_without_dac(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI as root minus the capabilities that override file permissions (setpriv drops them from
    the bounding and inheritable sets, so the exec'd process never has them)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [SETPRIV, "--bounding-set", NO_DAC, "--inh-caps", NO_DAC, "--", sys.executable, "-m", "datakd"]
    return subprocess.run([*command, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


needs_setpriv = pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None, reason="permission bits bind root only without CAP_DAC_OVERRIDE (setpriv)"
)


@needs_setpriv
def test_permission_denied_out_fails_at_start(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    out.chmod(0o555)
    result = _cli_without_dac(["train", "--config", str(recipe), "--out", str(out / "a"), "--quiet"])
    line = one_line(result.stderr)
    assert result.returncode == STORAGE_EXIT_CODE
    assert f"run directory {str(out / 'a')!r} is not writable (it would be created in {str(out)!r})" in line
    assert "Permission denied (errno 13)" in line
    assert list(out.iterdir()) == []


@needs_setpriv
def test_permission_denied_data_root_is_one_line(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "train").chmod(0o000)
    try:
        result = _cli_without_dac(_folder_args(root, tmp_path / "run"))
    finally:
        (root / "train").chmod(0o755)
    line = one_line(result.stderr)
    assert result.returncode == STORAGE_EXIT_CODE, line
    assert str(root / "train") in line and "Permission denied (errno 13)" in line


# ----------------------------------------------------------------------------------------------- memory
OOM_WRAPPER = """
import resource, sys
import torch
import datakd.cli, datakd.engine.build
datakd.cli.build_parser()  # command modules imported before the limit
torch.ones(1) + 1
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
sys.exit(datakd.cli.main(sys.argv[2:]))
"""


def test_a_batch_beyond_an_address_space_limit_is_one_line_naming_the_batch_size(
    recipe: Path, tmp_path: Path
) -> None:
    """A real allocation failure: 1 GiB of address space more than the imports took; the 6,000-image
    batch's first activation alone is 301 MB and the step needs several."""
    out = tmp_path / "run"
    args = ["train", "--config", str(recipe), "--out", str(out), "--quiet", "epochs=1"]
    args += ["data.batch_size=6000", "data.train_subset=null"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", OOM_WRAPPER, "1024", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=180)  # fmt: skip
    line = one_line(result.stderr)
    assert result.returncode == OUT_OF_MEMORY_EXIT_CODE, line
    assert "out of memory in epoch 1 step 1: DefaultCPUAllocator: can't allocate memory" in line
    assert "lower data.batch_size (now 6000, e.g. data.batch_size=3000" in line
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cuda_out_of_memory_takes_the_same_path(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Injected: no CUDA device here; torch raises `torch.OutOfMemoryError` (a RuntimeError) on one."""
    original = Trainer.train_step

    def step(self: Trainer, batch: Any) -> None:
        if self.global_step == 9:  # epoch 2 (8 steps per epoch): epoch 1's last.pt exists
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1 GiB free)")
        original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    out = tmp_path / "run"
    code, err = run_cli(["train", "--config", str(recipe), "--out", str(out), "--quiet"], capsys)
    line = one_line(err)
    assert code == OUT_OF_MEMORY_EXIT_CODE
    assert "out of memory in epoch 2 step 2: CUDA out of memory. Tried to allocate 2.00 GiB" in line
    assert "data.batch_size (now 64" in line
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


# ----------------------------------------------------------------------------------------------- data gone
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of real Fashion-MNIST images: 3 classes × 16 training and × 4 val PNGs."""
    from torchvision.io import write_png

    from datakd.data.quickstart import _load

    train, test = _load()
    root = tmp_path_factory.mktemp("imagefolder")
    for split, arrays, per_class in (("train", train, 16), ("val", test, 4)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            idx = (arrays.labels == c).nonzero().flatten()[:per_class]
            for i in idx.tolist():
                image = torch.nn.functional.interpolate(arrays.images[i : i + 1].float(), size=32)[0]
                write_png(image.repeat(3, 1, 1).round().to(torch.uint8), str(folder / f"{i}.png"))
    return root


def _folder_args(root: Path, out: Path) -> list[str]:
    return ["train", "--config", str(REPO / "recipes/tiny/teacher.yaml"), "--out", str(out), "--quiet",
            "data.dataset=imagefolder", f"data.root={root}", "data.options={}", "data.loader=workers",
            "data.workers=2", "data.augment=imagenet", "data.image_size=32", "data.batch_size=4",
            "data.eval_batch_size=12", "data.train_subset=null", "data.test_subset=null", "epochs=2",
            "device=cpu", "student.name=resnet8", "student.kwargs={}", "seed=0"]  # fmt: skip


@pytest.mark.parametrize("fault", ["deleted", "truncated"])
def test_an_image_gone_mid_epoch_stops_after_the_step_in_progress_and_resumes(
    fault: str,
    image_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While the two workers read epoch 2 (12 steps of 4 images), an image of its step 11 is deleted or
    cut in half; the run trains steps 1-10, stops with one line naming the file and a last.pt at that
    point, and once the file is back `--resume` ends with the weights of an uninterrupted run."""
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    assert main(_folder_args(root, tmp_path / "reference")) == 0
    from datakd.data.imagefolder import imagefolder

    paths = imagefolder(str(root)).train.paths
    victim: dict[str, Any] = {}
    original_step = Trainer.train_step

    def step(self: Trainer, batch: Any) -> None:
        if self.epoch == 1 and self.step == 1 and not victim:
            order = self.loader.order(1).tolist()
            path = Path(paths[order[10 * 4]])  # the first image of step 11
            victim.update(path=path, data=path.read_bytes())
            path.unlink() if fault == "deleted" else path.write_bytes(
                victim["data"][: len(victim["data"]) // 2]
            )
        original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    out = tmp_path / "run"
    code, err = run_cli(_folder_args(root, out), capsys)
    line = one_line(err)
    assert code == STORAGE_EXIT_CODE
    assert f"image {str(victim['path'])!r}" in line
    assert ("No such file or directory" if fault == "deleted" else "is truncated") in line
    assert "stopped after epoch 1 step 10 (global step 22)" in line and "--resume" in line
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 10)
    monkeypatch.undo()
    victim["path"].write_bytes(victim["data"])  # the file is back
    code, err = run_cli([*_folder_args(root, out), "--resume"], capsys)
    assert code == 0, err
    assert_same_weights(tmp_path / "reference" / "last.pt", out / "last.pt")


# ----------------------------------------------------------------------------------------------- PBA search
def test_a_pba_search_into_a_full_disk_fails_before_ray_starts(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from datakd.faults import StorageError
    from datakd.pba.search import prepare_spec, run_search

    spec = prepare_spec(tiny_config(tmp_path / "unused"), "teacher", epochs=1, train_size=256)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        ballast = fill(disk)
        with pytest.raises(StorageError) as info:
            run_search(spec, disk / "search", population=2, num_cpus=1, quiet=True)
        ballast.unlink()
    message = str(info.value)
    assert "\n" not in message and f"search directory {str(disk / 'search')!r} is not writable" in message
    assert "No space left on device (errno 28)" in message
    assert not ray.is_initialized()


def test_a_member_storage_error_reaches_the_user_as_its_own_line() -> None:
    """Formatting only: Ray keeps a member's exception as `cause` and puts its traceback in the text."""
    from datakd.checkpoint import CheckpointWriteError
    from datakd.pba.search import _error_line

    class RayLike(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last):\n  File ...\nCheckpointWriteError: ...")
            self.cause = cause

    cause = CheckpointWriteError("cannot write '/s/trainer.pt': No space left on device (errno 28); ...")
    assert _error_line(RayLike(cause)) == str(cause)
    assert _error_line(RuntimeError("Traceback ...\n  File x\nValueError: bad")) == "ValueError: bad"
