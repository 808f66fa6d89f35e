"""Building blocks of DPK's transformation modules: patch tokens, a pre-LN ViT block, random token masks.

The ViT block is written here rather than taken from `nn.TransformerEncoderLayer` so that its parameter
count is exactly the ViT one the paper's Table 17 implies (12·d² + 13·d per block at MLP ratio 4: qkv
and output projections 4·d² + 4·d, MLP 8·d² + 5·d, two LayerNorms 4·d) and attention runs through
`F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPUs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from datakd.errors import DatakdError


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise DatakdError(f"dpk: width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (ViT, DPK App. A.2)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """`depth` ViT blocks and a final LayerNorm (an encoder or DPK's shared decoder)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class PatchEmbed(nn.Module):
    """k×k stride-k convolution: a C×H×W map becomes N = HW/k² tokens of width d (B×N×d)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def positional_embedding(tokens: int, dim: int) -> nn.Parameter:
    """Learnable 1-D positional embedding (1×N×d), truncated-normal σ=0.02 as in ViT/MAE."""
    weight = torch.empty(1, tokens, dim)
    nn.init.trunc_normal_(weight, std=0.02)
    return nn.Parameter(weight)


def sincos_2d_embedding(
    rows: int,
    cols: int,
    dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding (MAE's), 1×(rows·cols)×d in row-major token order.

    The first half of the width encodes the row index, the second half the column index, each as
    [sin(p·ω_i), cos(p·ω_i)] with ω_i = 10000^(−i/(d/4)). Nothing is learned per grid size, so it serves
    maps whose size changes from batch to batch (detection FPN levels); a token keeps its embedding when
    the grid grows to the right or bottom.
    """
    if dim % 4:
        raise DatakdError(
            f"dpk: a 2-D sine-cosine positional embedding needs a width divisible by 4, got {dim}"
        )
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(r), encode(c)], dim=1)
    return table.to(device=device, dtype=dtype).unsqueeze(0)


def init_vit_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: Xavier-uniform linear and patch weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            nn.init.xavier_uniform_(m.proj.weight.view(m.proj.weight.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def auto_patch_size(height: int, width: int, max_tokens: int = 64) -> int:
    """Patch side k so that N = (H/k)·(W/k) ≤ max_tokens (spec §5.2 [I]): the smallest power of two that
    tiles the map (32→4, 16→2, 8→1, 56→8, 28→4, 14→2, 7→1), else the smallest divisor of both sides."""
    divisors = [k for k in range(1, max(height, width) + 1) if height % k == 0 and width % k == 0]
    fits = [k for k in divisors if (height // k) * (width // k) <= max_tokens]
    powers = [k for k in fits if k & (k - 1) == 0]
    return (powers or fits or [math.gcd(height, width)])[0]


def check_patch_size(height: int, width: int, patch: int, where: str) -> None:
    if patch < 1 or height % patch or width % patch:
        raise DatakdError(
            f"{where}: patch_size {patch} does not tile the {height}×{width} feature map "
            f"(choose a divisor of both sides)"
        )


def unpatchify(tokens: torch.Tensor, channels: int, height: int, width: int, patch: int) -> torch.Tensor:
    """B×N×(C·k²) tokens (row-major patch order, each patch C×k×k) back to a B×C×H×W map."""
    b = tokens.shape[0]
    h, w = height // patch, width // patch
    x = tokens.reshape(b, h, w, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


def mask_to_map(mask: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """A B×N token mask as a B×1×H×W pixel mask (each token covers its k×k patch)."""
    b = mask.shape[0]
    grid = mask.reshape(b, 1, height // patch, width // patch)
    return grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def masked_count(ratio: torch.Tensor | float, tokens: int) -> torch.Tensor:
    """round(π·N) with halves rounded up, as an integer tensor (stays on the device, no host sync)."""
    ratio = torch.as_tensor(ratio, dtype=torch.float64)
    return torch.floor(ratio.clamp(0.0, 1.0) * tokens + 0.5).long()


def random_token_mask(
    ratio: torch.Tensor | float,
    batch: int,
    tokens: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """B×N bool mask with exactly round(π·N) True entries per sample at uniformly random positions.

    MAE-style noise argsort: each sample gets its own uniform noise; the round(π·N) positions with the
    smallest noise are masked. The count is compared on the device, so a CKA-driven π needs no sync.
    """
    noise = torch.rand(batch, tokens, device=device, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each position's noise within its sample
    count = masked_count(ratio, tokens).to(device)
    return rank < count
