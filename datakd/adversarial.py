"""Gradient-sign attacks on normalised image batches: FGSM (Goodfellow et al. 2015) and PGD (Madry et al.
2018), shared by TST's Table 7 "Attack" ablation and EffDstl's FGSM probe (Fig. 7).

Images live in normalised space, (x − mean)/std, so a budget ε in pixel units ([0, 1]) is ε/std per channel
and the valid range is [−mean/std, (1 − mean)/std]. `PixelBox` holds those per-channel tensors once; the
attacks only need an objective to *increase* and differentiate it with respect to the images alone
(`torch.autograd.grad`), so no parameter gradient of the models is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from datakd.errors import ConfigError


@dataclass(frozen=True)
class PixelBox:
    """Per-channel bounds of valid images and the size of one pixel unit, in normalised space (1×C×1×1)."""

    low: torch.Tensor
    high: torch.Tensor
    unit: torch.Tensor

    @classmethod
    def from_mean_std(
        cls, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
    ) -> PixelBox:
        m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return cls(low=-m / s, high=(1 - m) / s, unit=1 / s)

    def to(self, device: torch.device) -> PixelBox:
        return PixelBox(self.low.to(device), self.high.to(device), self.unit.to(device))

    def project(self, x: torch.Tensor, origin: torch.Tensor, epsilon: float) -> torch.Tensor:
        """Clip x to the L∞ ball of radius ε (pixel units) around `origin` and to the valid image range."""
        radius = epsilon * self.unit
        x = torch.maximum(torch.minimum(x, origin + radius), origin - radius)
        return torch.maximum(torch.minimum(x, self.high), self.low)


def _input_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = objective(x)
        (grad,) = torch.autograd.grad(value, x)
    return grad


def pgd(
    images: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    box: PixelBox,
    epsilon: float,
    steps: int = 1,
    step_size: float | None = None,
    random_start: bool = False,
) -> torch.Tensor:
    """Maximise `objective(x)` (a scalar) over the L∞ ball of radius ε around `images` by `steps` signed
    gradient steps of `step_size` (pixel units; default ε when steps = 1, else 2.5·ε/steps as Madry et
    al.), each projected back onto the ball and the image range; returns detached images. One step from
    the clean images with step ε is FGSM."""
    if epsilon < 0 or steps < 1:
        raise ConfigError(f"attack: need epsilon >= 0 and steps >= 1, got epsilon={epsilon}, steps={steps}")
    size = step_size if step_size is not None else (epsilon if steps == 1 else 2.5 * epsilon / steps)
    box = box.to(images.device)
    origin = images.detach()
    x = origin
    if random_start:
        noise = (torch.rand(origin.shape, device=origin.device) * 2 - 1) * epsilon * box.unit
        x = box.project(origin + noise.to(origin.dtype), origin, epsilon)
    for _ in range(steps):
        grad = _input_gradient(objective, x)
        x = box.project(x.detach() + size * box.unit * grad.sign(), origin, epsilon)
    return x.detach()


def fgsm(
    images: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    box: PixelBox,
    epsilon: float,
) -> torch.Tensor:
    """x + ε·sign(∇ₓ objective), clipped to the image range (Goodfellow et al. 2015)."""
    return pgd(images, objective, box, epsilon, steps=1, step_size=epsilon)
