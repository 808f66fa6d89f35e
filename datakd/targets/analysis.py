"""EffDstl §4 analysis (seed 003): the normalised score of Figs. 5–6 and the FGSM probe of Fig. 7.

* `normalized_score(acc, weak, strong)` = (acc − acc⁻)/(acc⁺ − acc⁻): 0 = as good as distilling from the
  weak teacher alone, 1 = as good as the strong teacher alone.
* `fgsm_probe`: are the samples a transform keeps near the decision boundaries that other networks share?
  FGSM examples are made from the teacher (ε·sign ∇ₓ CE(teacher(x), y)); for each probed network the
  change of its confidence on the label, p(y|x_adv) − p(y|x), is recorded per sample, for samples inside
  and outside the manipulated subset (the paper's red and blue curves).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datakd.adversarial import PixelBox, fgsm
from datakd.errors import DatakdError
from datakd.targets import functional as TF
from datakd.targets.subsets import Subset


def normalized_score(acc: float, acc_weak: float, acc_strong: float) -> float:
    """(acc − acc⁻)/(acc⁺ − acc⁻), EffDstl Figs. 5–6; acc⁻/acc⁺ distil from the weak/strong teacher only."""
    gap = acc_strong - acc_weak
    if not math.isfinite(gap) or gap == 0:
        raise DatakdError(
            f"normalised score undefined: the strong ({acc_strong}) and weak ({acc_weak}) baselines "
            "must differ"
        )
    return (acc - acc_weak) / gap


def run_top1(run_dir: str | Path, key: str = "top1_last") -> float:
    """A run's accuracy from its summary.json (`top1_last` by default, as the docs recommend)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise DatakdError(f"{str(path)!r} not found: give a finished run directory")
    summary = json.loads(path.read_text())
    if not isinstance(summary.get(key), (int, float)):
        raise DatakdError(f"{str(path)!r} has no numeric {key!r}; keys: {', '.join(sorted(summary))}")
    return float(summary[key])


def subset_membership(
    subset: Subset,
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Which samples a subset transform would rewrite: the same atoms as in training, at `temperature`."""
    teacher = torch.softmax(teacher_logits.float() / temperature, dim=1)
    student = torch.softmax(student_logits.float() / temperature, dim=1)
    masks = {
        "correct": TF.correct_mask(teacher, labels),
        "regularization": TF.regularization_mask(student, teacher, labels),
    }
    return subset.mask(masks)


def label_confidence(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p(y | x) at temperature 1, per sample, without gradient."""
    with torch.no_grad():
        probs = torch.softmax(model(images).float(), dim=1)
    return probs.gather(1, labels.view(-1, 1)).squeeze(1)


@dataclass
class ProbeRecord:
    index: int
    manipulated: bool
    network: str
    clean: float
    adversarial: float

    @property
    def delta(self) -> float:
        return self.adversarial - self.clean


def fgsm_probe(
    teacher: nn.Module,
    networks: Mapping[str, nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    box: PixelBox,
    epsilon: float,
) -> list[ProbeRecord]:
    """FGSM from the (eval-mode) teacher on each batch of (images, labels, dataset indices, manipulated?),
    then every network's confidence change on the label. Models must be in eval mode."""

    records: list[ProbeRecord] = []
    for images, labels, indices, manipulated in batches:

        def objective(x: torch.Tensor, labels: torch.Tensor = labels) -> torch.Tensor:
            return F.cross_entropy(teacher(x).float(), labels, reduction="sum")

        adversarial = fgsm(images, objective, box, epsilon)
        for name, net in networks.items():
            clean = label_confidence(net, images, labels).tolist()
            adv = label_confidence(net, adversarial, labels).tolist()
            for i in range(len(labels)):
                records.append(ProbeRecord(int(indices[i]), bool(manipulated[i]), name, clean[i], adv[i]))
    return records


def summarize_probe(records: list[ProbeRecord]) -> dict[str, dict[str, dict[str, float]]]:
    """network → group (`kept`, `manipulated`) → count, mean and median confidence change, and the mean of
    |Δ| (how sensitive the group's confidence is to the teacher's adversarial direction)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(r.network for r in records):
        out[name] = {}
        for group, flag in (("kept", False), ("manipulated", True)):
            deltas = torch.tensor([r.delta for r in records if r.network == name and r.manipulated == flag])
            if len(deltas) == 0:
                continue
            out[name][group] = {
                "count": len(deltas),
                "mean_delta": float(deltas.mean()),
                "median_delta": float(deltas.median()),
                "mean_abs_delta": float(deltas.abs().mean()),
            }
    return out
