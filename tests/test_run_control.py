"""`RunControl` is the whole of what events and augmenters may use of a run, and the Trainer provides it.

Two static checks (no run is built): every member the protocol names exists on `Trainer`, and every
``trainer.<name>`` that a stage event or augmenter reads is a member of the protocol, so methods cannot
reach into the engine past the interface.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from datakd.api.run import RunControl
from datakd.engine.trainer import Trainer

PACKAGE = Path(__file__).resolve().parents[1] / "datakd"


def protocol_members() -> set[str]:
    names = set(RunControl.__annotations__)
    names |= {n for n, v in vars(RunControl).items() if callable(v) and not n.startswith("_")}
    return names


def test_trainer_has_every_member_of_run_control() -> None:
    init = ast.parse(inspect.getsource(Trainer.__init__).strip().replace("\n    ", "\n"))
    assigned = {
        node.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    }
    missing = [n for n in sorted(protocol_members()) if not hasattr(Trainer, n) and n not in assigned]
    assert not missing, f"Trainer lacks RunControl members {missing}"


def test_events_and_augmenters_use_only_run_control() -> None:
    allowed = protocol_members()
    outside = []
    for folder in ("events", "augmenters"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "trainer"
                    and node.attr not in allowed
                ):
                    outside.append(f"{path.relative_to(PACKAGE)}:{node.lineno} trainer.{node.attr}")
    assert not outside, "reaches past RunControl:\n" + "\n".join(outside)
