"""f_DE (spec §1.6): the learnable composition of the 14 sub-policies, x̂ = x + Σ_{i∈Z} p_i (f_i(x, m_i) − x).

Holds the learnable logits θ_p (14) and θ_m (11) and the 11 meta-encoders. Each call draws a `Draw`:
N_A distinct ops Z (uniform, one subset per batch), one relaxed-Bernoulli gate p_i per op (shared by the
batch) and the magnitudes m_i. How θ becomes a gate and a magnitude is `rbd_mode`:

* ``code`` (default; the authors' code, which produced the numbers): gate = RB(logit = σ(θ_p)), so the
  apply probability is σ(σ(θ_p)) ∈ (0.5, 0.731); m = σ(θ_m), not sampled.
* ``paper`` (Eq. 4): gate = RB(logit = log σ(θ_p)), apply probability σ(θ_p)/(1 + σ(θ_p)); magnitudes are
  sampled the same way, m = RB(logit = log σ(θ_m)).
* ``standard``: the textbook relaxed Bernoulli, gate = RB(logit = θ_p), apply probability σ(θ_p);
  m = σ(θ_m) as in the code.

RB(·) = σ((logit + L)/τ_l), L ~ Logistic(0, 1), τ_l = 0.05. Randomness comes from the global RNG
(checkpointed by the trainer, so a resumed run draws the same augmentations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from datakd.augmenters.tst.encoders import relaxed_bernoulli, warp
from datakd.augmenters.tst.ops import (
    AFFINE_OPS,
    FIXED_OPS,
    MAGNITUDE_OPS,
    OPS,
    apply_pixel_op,
    cutout_mask,
    op_index,
)
from datakd.data.loaders import Normalizer
from datakd.errors import ConfigError, choice_error

RBD_MODES = ("code", "paper", "standard")
NUM_MAGNITUDE_OPS = len(MAGNITUDE_OPS)


@dataclass
class Draw:
    """One batch's random choices: op indices (into OPS), their gates, and all 11 magnitudes."""

    ops: list[int]
    gates: torch.Tensor  # len(ops)
    magnitudes: torch.Tensor  # 11


class TSTPolicy(nn.Module):
    """θ_p, θ_m and the meta-encoders; `forward(x)` = one random f_DE pass over a normalised batch."""

    def __init__(
        self,
        encoders: nn.ModuleDict,
        normalizer: Normalizer,
        num_ops: int = 4,
        rbd_mode: str = "code",
        temperature: float = 0.05,
        ops: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if rbd_mode not in RBD_MODES:
            raise choice_error("tst rbd_mode", rbd_mode, RBD_MODES, ConfigError)
        active = list(OPS if ops is None else ops)
        for name in active:
            op_index(name)
        if len(set(active)) != len(active):
            raise ConfigError(f"tst.ops lists an op twice: {active}")
        if not 1 <= num_ops <= len(active):
            raise ConfigError(
                f"tst.num_ops must be between 1 and {len(active)} (the active ops), got {num_ops}"
            )
        if temperature <= 0:
            raise ConfigError(f"tst.temperature must be positive, got {temperature}")
        missing = [name for name in active if name in MAGNITUDE_OPS and name not in encoders]
        if missing:
            raise ConfigError(f"tst: no meta-encoder for ops {missing}")
        self.encoders = encoders
        self.normalizer = normalizer
        self.num_ops = num_ops
        self.rbd_mode = rbd_mode
        self.temperature = temperature
        self.active = [op_index(name) for name in active]
        self.prob_logits = nn.Parameter(torch.zeros(len(OPS)))  # θ_p
        self.mag_logits = nn.Parameter(torch.zeros(NUM_MAGNITUDE_OPS))  # θ_m

    # ------------------------------------------------------------------ what θ means
    def probabilities(self) -> torch.Tensor:
        """σ(θ_p): the 14 probabilities as the paper plots them."""
        return torch.sigmoid(self.prob_logits)

    def magnitudes(self) -> torch.Tensor:
        """σ(θ_m): the 11 magnitudes in (0, 1) (the mean of the sampled ones in paper mode)."""
        return torch.sigmoid(self.mag_logits)

    def gate_logits(self) -> torch.Tensor:
        p = torch.sigmoid(self.prob_logits)
        if self.rbd_mode == "code":
            return p
        if self.rbd_mode == "paper":
            return torch.log(p)
        return self.prob_logits

    def apply_probabilities(self) -> torch.Tensor:
        """P(gate > 0.5) per op under `rbd_mode`: the chance that a chosen op is actually applied."""
        return torch.sigmoid(self.gate_logits())

    # ------------------------------------------------------------------ one pass
    def sample(self) -> Draw:
        """Draw ops, gates and magnitudes for one batch (differentiable in θ)."""
        pick = torch.randperm(len(self.active))[: self.num_ops].tolist()
        ops = [self.active[i] for i in pick]
        gates = relaxed_bernoulli(self.gate_logits(), self.temperature)[ops]
        if self.rbd_mode == "paper":
            magnitudes = relaxed_bernoulli(torch.log(torch.sigmoid(self.mag_logits)), self.temperature)
        else:
            magnitudes = torch.sigmoid(self.mag_logits)
        return Draw(ops, gates, magnitudes)

    def op_output(
        self, x: torch.Tensor, op: int, magnitude: torch.Tensor | None, random: bool
    ) -> torch.Tensor:
        """f_i(x, m_i) for one op on a normalised batch."""
        name = OPS[op]
        if name in MAGNITUDE_OPS:
            return self.encoders[name](x, magnitude, random=random)
        if name == "Cutout":
            height, width = x.shape[-2:]
            return x * cutout_mask(x.shape[0], height, width, x.device).to(x.dtype)
        with torch.no_grad():  # Equalize / Invert: denormalise → uint8 → op → renormalise (no gradient in x)
            pixels = apply_pixel_op(self.normalizer.inverse(x), name)
            return self.normalizer(pixels).to(x.dtype).contiguous()

    def apply(self, x: torch.Tensor, draw: Draw, random: bool = True) -> torch.Tensor:
        """x̂ = x + Σ_i p_i (f_i(x, m_i) − x) over the drawn ops (parallel, residual sum, Eq. 5)."""
        out = x
        for gate, op in zip(draw.gates, draw.ops):
            magnitude = draw.magnitudes[op] if op < NUM_MAGNITUDE_OPS else None
            out = out + gate.to(x.dtype) * (self.op_output(x, op, magnitude, random) - x)
        return out

    def apply_one_affine(
        self, x: torch.Tensor, draw: Draw, random: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense tasks (App. D.1): returns (x̂, Â). The drawn affine ops merge into one matrix,
        Â = I + Σ_i p_i (A_i − I) (Eq. 6), x̂_a = Affine(Â, x) (Eq. 7), and the other drawn ops are summed
        on top of x̂_a as in Eq. 5, x̂ = x̂_a + Σ_j p_j (f_j(x̂_a, m_j) − x̂_a) (Eq. 8). One warp, so each
        object stays one object, and Â (B×2×3, output → input) is what the targets follow."""
        batch = x.shape[0]
        identity = torch.eye(2, 3, dtype=torch.float32, device=x.device).expand(batch, 2, 3)
        merged = identity
        for gate, op in zip(draw.gates, draw.ops):
            if OPS[op] in AFFINE_OPS:
                matrix = self.encoders[OPS[op]].matrix(draw.magnitudes[op], batch, random)
                merged = merged + gate * (matrix - identity)
        fill = next((self.encoders[name].fill for name in AFFINE_OPS if name in self.encoders), 0.0)
        out = warp(x, merged, fill) if merged is not identity else x
        base = out
        for gate, op in zip(draw.gates, draw.ops):
            if OPS[op] not in AFFINE_OPS:
                magnitude = draw.magnitudes[op] if op < NUM_MAGNITUDE_OPS else None
                out = out + gate.to(x.dtype) * (self.op_output(base, op, magnitude, random) - base)
        return out, merged

    def forward(self, x: torch.Tensor, random: bool = True) -> torch.Tensor:
        return self.apply(x, self.sample(), random)


__all__ = ["FIXED_OPS", "RBD_MODES", "Draw", "TSTPolicy"]
