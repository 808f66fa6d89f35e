"""Pure soft-target formulas of EffDstl (seed 003): consistent knowledge mining and the §4 analysis tools.

Every function takes probabilities (rows summing to 1) or logits as B×K tensors and integer labels (B,),
and returns B×K target distributions whose rows sum to 1; nothing here has state, so the transforms in
this package and the tests call the same code. Formulas follow spec §4.3 and §4.5 (the renormalised
forms that correct the paper's typos).

One helper carries all the "keep the label's mass, redistribute the rest" schemes: `with_label_mass(base,
y, m)` puts mass m on the label and rescales base's off-label entries to sum to 1 − m, i.e.
``out_i = base_i · (1 − m) / Σ_{j≠y} base_j``. Partial/confidence replacement, teacher/student
amplification and label smoothing (uniform base) are all instances of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Off-label mass below this counts as "none left" (a one-hot base); the remainder is spread uniformly.
_TINY = 1e-30


def label_probs(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """probs[b, labels[b]] as a (B,) tensor."""
    return probs.gather(1, labels.view(-1, 1)).squeeze(1)


def with_label_mass(base: torch.Tensor, labels: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Rows with `mass` on the label and base's off-label entries rescaled to sum to 1 − mass.

    Where base has no off-label mass (a one-hot row) but mass < 1, the remainder is spread uniformly over
    the other classes, so every row still sums to 1. Needs K ≥ 2.
    """
    num_classes = base.shape[1]
    if num_classes < 2:
        raise ValueError(f"soft targets need at least 2 classes, got {num_classes}")
    onehot = F.one_hot(labels, num_classes).to(base.dtype)
    off = base * (1.0 - onehot)
    off_sum = off.sum(dim=1, keepdim=True)
    mass = mass.to(base.dtype).view(-1, 1)
    uniform_off = (1.0 - onehot) / (num_classes - 1)
    shape = torch.where(off_sum > _TINY, off / off_sum.clamp_min(_TINY), uniform_off)
    return onehot * mass + shape * (1.0 - mass)


def smoothed_labels(labels: torch.Tensor, num_classes: int, smoothing: float = 0.99) -> torch.Tensor:
    """EffDstl's label: smoothing·onehot + (1 − smoothing)/K (K the true number of classes)."""
    onehot = F.one_hot(labels, num_classes).float()
    return smoothing * onehot + (1.0 - smoothing) / num_classes


def label_smoothing(labels: torch.Tensor, num_classes: int, confidence: float) -> torch.Tensor:
    """Paper Eq. 3: the label gets `confidence` (t), every other class (1 − t)/(N − 1)."""
    uniform = torch.full((labels.shape[0], num_classes), 1.0 / num_classes, device=labels.device)
    return with_label_mass(uniform, labels, torch.full_like(uniform[:, 0], confidence))


def amplify(probs: torch.Tensor, labels: torch.Tensor, delta: float) -> torch.Tensor:
    """Paper Eqs. 4–5 (corrected): label prob ← min(p_y + δ, 1), other classes renormalised to the rest.

    Teacher amplification passes the teacher's probabilities, student amplification the student's.
    """
    return with_label_mass(probs, labels, (label_probs(probs, labels) + delta).clamp(max=1.0))


def full_replacement(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Paper §4.1: the strong teacher's distribution replaces the weak one's."""
    del weak
    return strong


def partial_replacement(weak: torch.Tensor, strong: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep the weak teacher's label confidence; the other classes follow the strong teacher (Eq. 1)."""
    return with_label_mass(strong, labels, label_probs(weak, labels))


def confidence_replacement(weak: torch.Tensor, strong: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Take the strong teacher's label confidence; the other classes keep the weak teacher's shape (Eq. 2)."""
    return with_label_mass(weak, labels, label_probs(strong, labels))


def correct_mask(teacher_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Samples the teacher classifies correctly (argmax = label; ties go to the lowest index)."""
    return teacher_probs.argmax(dim=1) == labels


def regularization_mask(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Samples where the student is more confident on the label than the teacher (ŷ^s_k > ŷ^t_k)."""
    return label_probs(student_probs, labels) > label_probs(teacher_probs, labels)


def knowledge_mining_with_mask(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_temperature: float = 0.7,
    smoothing: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`knowledge_mining`'s targets and its reg&cor mask (B,) of the samples that were rewritten."""
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / teacher_temperature, dim=1)
    # −log p_s[y] < −log p_t[y], compared in log space (exact even when both probabilities round to 1).
    regular = label_probs(log_p_s, labels) > label_probs(log_p_t, labels)
    mask = regular & (log_p_t.argmax(dim=1) == labels)
    targets = torch.where(
        mask.view(-1, 1), smoothed_labels(labels, log_p_t.shape[1], smoothing), log_p_t.exp()
    )
    return targets, mask


def knowledge_mining(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_temperature: float = 0.7,
    smoothing: float = 0.99,
) -> torch.Tensor:
    """EffDstl's consistent knowledge mining targets (spec §4.3), B×K.

    The teacher is sharpened at `teacher_temperature`, the student read at τ = 1. Where the teacher is
    correct AND less confident on the label than the student (reg&cor), the target is the label smoothed
    to `smoothing` (smoothing·onehot + (1 − smoothing)/K); elsewhere it is the sharpened teacher.
    """
    return knowledge_mining_with_mask(student_logits, teacher_logits, labels, teacher_temperature, smoothing)[
        0
    ]
