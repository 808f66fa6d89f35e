"""`datakd tst fit` / `datakd tst show`: Stage I from the command line, cached by content hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datakd.augmenters.tst.encoder_file import load_encoders
from datakd.cli import main

QUICK = ["--max-iters", "2", "--subset", "64", "data.options.pad_to_32=true", "data.options.rgb=true"]


def fit(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["tst", "fit", *args, "--quiet"]) == 0
    return capsys.readouterr().out


def test_fit_writes_then_reuses_then_refits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "enc.pt"
    first = fit(capsys, "--dataset", "quickstart", "--out", str(out), *QUICK)
    assert "written" in first and "Rotate" in first and "MSE init" in first
    payload = load_encoders(out)
    assert len(payload["encoders"]) == 11 and payload["data"]["channels"] == 3
    assert all(r["iters"] == 2 and r["seconds"] >= 0 for r in payload["report"].values())
    stamp = out.stat().st_mtime_ns
    second = fit(capsys, "--dataset", "quickstart", "--out", str(out), *QUICK)
    assert f"up to date, re-used (hash {payload['hash']})" in second and out.stat().st_mtime_ns == stamp
    other = fit(capsys, "--dataset", "quickstart", "--out", str(out), *QUICK, "--seed", "1")
    assert "written" in other and load_encoders(out)["hash"] != payload["hash"]
    assert main(["tst", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "TranslateX" in shown and "fit settings" in shown


def test_fit_from_a_recipe_writes_its_encoders_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "enc" / "fmnist.pt"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "quickstart", "options": {"pad_to_32": True, "rgb": True}},
                "augmenter": {
                    "name": "tst",
                    "encoders": str(target),
                    "fit": {"max_iters": 2, "subset": 64, "ops": ["ShearX", "Brightness"]},
                },
            }
        )
    )
    text = fit(capsys, "--config", str(recipe))
    assert f"{target}: written" in text
    assert list(load_encoders(target)["encoders"]) == ["ShearX", "Brightness"]


def test_fit_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tst", "fit", "--dataset", "quickstart", "--quiet"]) == 2
    assert "pass --out" in capsys.readouterr().err
    assert (
        main(["tst", "fit", "--dataset", "quickstart", "--out", str(tmp_path / "e.pt"), "--ops", "Rotat"])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown tst.fit op 'Rotat'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["tst", "show", str(tmp_path / "junk.pt")]) == 2
