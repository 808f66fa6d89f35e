"""Every shipped recipe resolves to the same config as when its digest was stored.

Refactors must not change a recipe's meaning; a deliberate recipe change updates the stored digest in the
same commit (regenerate with `python tests/test_recipe_digests.py --update` and say why in the message).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from datakd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DIGESTS = ROOT / "tests" / "fixtures" / "recipe_digests.json"


def shipped_recipes() -> list[Path]:
    return sorted(p for p in (ROOT / "recipes").rglob("*.yaml"))


def recipe_digest(path: Path) -> str:
    """SHA-256 of the resolved config as canonical JSON (sorted keys), independent of YAML layout."""
    resolved = load_config(path).to_dict()
    text = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _key(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_recipe_has_a_stored_digest() -> None:
    stored = json.loads(DIGESTS.read_text())
    names = {_key(p) for p in shipped_recipes()}
    assert names == set(stored), (
        f"recipes without digest: {sorted(names - set(stored))}; "
        f"digests without recipe: {sorted(set(stored) - names)}"
    )


@pytest.mark.parametrize("path", shipped_recipes(), ids=_key)
def test_recipe_resolves_to_stored_digest(path: Path) -> None:
    stored = json.loads(DIGESTS.read_text())
    assert recipe_digest(path) == stored.get(_key(path)), f"{_key(path)} resolves differently than stored"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_recipe_digests.py --update")
    table = {_key(p): recipe_digest(p) for p in shipped_recipes()}
    DIGESTS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(table)} digests to {DIGESTS}")
