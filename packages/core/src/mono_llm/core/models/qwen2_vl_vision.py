"""The vision transformers of Qwen2-VL and Qwen2.5-VL.

Patches ([patches, C * temporal_patch * patch * patch], each 2x2 merge group contiguous) are
embedded by a 3-D convolution; blocks attend within each image frame, their rotary embedding
reading each patch's (row, column); the merger concatenates every 2x2 group and projects it
to the decoder's width. Qwen2.5-VL differs in its blocks (RMSNorm, a SwiGLU MLP with biases),
its merger norm (RMSNorm), and windowed attention: patches are reordered window by window
(windows of `window_size` pixels) and all blocks but `fullatt_block_indexes` attend within
a window only; the merged outputs are put back in image order at the end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mono_llm.core.models.clip import VisionMLP, vision_activation


class VisionRMSNorm(nn.Module):
    """RMSNorm computed in float32 (as transformers' Qwen2.5-VL vision norm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass(slots=True)
class Qwen2VisionSettings:
    depth: int
    embed_dim: int
    out_dim: int  # the decoder's hidden size
    num_heads: int
    mlp_hidden: int
    hidden_act: str
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    rope_theta: float
    qwen2_5: bool = False  # RMSNorm, SwiGLU MLP and windowed attention
    window_size: int = 0  # pixels per window side (Qwen2.5-VL)
    full_attention_blocks: tuple[int, ...] = ()

    @classmethod
    def from_hf(
        cls, vision: dict[str, Any], text_hidden: int, *, qwen2_5: bool = False
    ) -> Qwen2VisionSettings:
        rope = vision.get("rope_parameters") or {}
        if qwen2_5:  # the tower's own width is `hidden_size`, its output `out_hidden_size`
            embed_dim = int(vision.get("hidden_size", 1280))
            out_dim = int(vision.get("out_hidden_size", text_hidden))
            mlp_hidden = int(vision.get("intermediate_size", 3420))
            act = str(vision.get("hidden_act", "silu"))
        else:
            embed_dim = int(vision.get("embed_dim", 1280))
            out_dim = int(vision.get("hidden_size", text_hidden))
            mlp_hidden = int(embed_dim * float(vision.get("mlp_ratio", 4)))
            act = str(vision.get("hidden_act", "quick_gelu"))
        return cls(
            depth=int(vision.get("depth", 32)),
            embed_dim=embed_dim,
            out_dim=out_dim,
            num_heads=int(vision.get("num_heads", 16)),
            mlp_hidden=mlp_hidden,
            hidden_act=act,
            in_channels=int(vision.get("in_channels", vision.get("in_chans", 3))),
            patch_size=int(vision.get("patch_size", 14)),
            temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            qwen2_5=qwen2_5,
            window_size=int(vision.get("window_size", 112)) if qwen2_5 else 0,
            full_attention_blocks=tuple(int(i) for i in vision.get("fullatt_block_indexes", ()))
            if qwen2_5
            else (),
        )


class Qwen2VisionPatchEmbed(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.shape = (s.in_channels, s.temporal_patch_size, s.patch_size, s.patch_size)
        kernel = self.shape[1:]
        self.proj = nn.Conv3d(s.in_channels, s.embed_dim, kernel, stride=kernel, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.view(-1, *self.shape).to(self.proj.weight.dtype)
        return self.proj(x).view(x.shape[0], -1)  # [patches, embed_dim]


class Qwen2VisionAttention(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.num_heads = s.num_heads
        self.head_dim = s.embed_dim // s.num_heads
        self.qkv = nn.Linear(s.embed_dim, 3 * s.embed_dim)
        self.proj = nn.Linear(s.embed_dim, s.embed_dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: list[int]
    ) -> torch.Tensor:
        length = x.shape[0]
        q, k, v = self.qkv(x).view(length, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = torch.empty_like(q)
        # Attention stays within each image: one dense SDPA per image (few, large blocks).
        for start, stop in itertools.pairwise(bounds):
            out[start:stop] = F.scaled_dot_product_attention(
                q[start:stop].transpose(0, 1),
                k[start:stop].transpose(0, 1),
                v[start:stop].transpose(0, 1),
            ).transpose(0, 1)
        return self.proj(out.reshape(length, -1))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style rotation in float32 ([patches, heads, head_dim]; cos/sin [patches, head_dim])."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class Qwen2_5VisionMLP(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(s.embed_dim, s.mlp_hidden)
        self.up_proj = nn.Linear(s.embed_dim, s.mlp_hidden)
        self.down_proj = nn.Linear(s.mlp_hidden, s.embed_dim)
        self._act = vision_activation(s.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self._act(self.gate_proj(x)) * self.up_proj(x))


def _norm(s: Qwen2VisionSettings) -> nn.Module:
    return VisionRMSNorm(s.embed_dim) if s.qwen2_5 else nn.LayerNorm(s.embed_dim, eps=1e-6)


class Qwen2VisionBlock(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.norm1 = _norm(s)
        self.norm2 = _norm(s)
        self.attn = Qwen2VisionAttention(s)
        self.mlp = (
            Qwen2_5VisionMLP(s) if s.qwen2_5 else VisionMLP(s.embed_dim, s.mlp_hidden, s.hidden_act)
        )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bounds: list[int]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, bounds)
        return x + self.mlp(self.norm2(x))


class Qwen2PatchMerger(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.group_width = s.embed_dim * s.spatial_merge_size**2
        self.ln_q = _norm(s)
        # `mlp.0` and `mlp.2` as in the checkpoint (a Sequential with the GELU at index 1)
        self.mlp = nn.Sequential(
            nn.Linear(self.group_width, self.group_width),
            nn.GELU(),
            nn.Linear(self.group_width, s.out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.group_width))


class Qwen2VisionTransformer(nn.Module):
    def __init__(self, s: Qwen2VisionSettings) -> None:
        super().__init__()
        self.settings = s
        self.patch_embed = Qwen2VisionPatchEmbed(s)
        self.blocks = nn.ModuleList([Qwen2VisionBlock(s) for _ in range(s.depth)])
        self.merger = Qwen2PatchMerger(s)

    def forward(self, patches: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """patches [sum of t*h*w, patch features] of several images -> [sum of t*h*w/4, out]."""
        s = self.settings
        x = self.patch_embed(patches)
        cos, sin = self._rotary(grids, x.device)
        frames = [0]
        for t, h, w in grids:  # full attention: each frame attends within itself
            frames.extend(frames[-1] + h * w * (i + 1) for i in range(t))
        if not s.qwen2_5:
            for block in self.blocks:
                x = block(x, cos, sin, frames)
            return self.merger(x)
        # Windowed attention: patches reordered window by window (merge groups kept whole).
        order, windows = self._windows(grids)
        unit = s.spatial_merge_size**2
        patch_order = torch.from_numpy((order[:, None] * unit + np.arange(unit)).reshape(-1)).to(
            x.device
        )
        x, cos, sin = x[patch_order], cos[patch_order], sin[patch_order]
        for index, block in enumerate(self.blocks):
            bounds = frames if index in s.full_attention_blocks else windows
            x = block(x, cos, sin, bounds)
        merged = self.merger(x)
        return merged[torch.from_numpy(np.argsort(order)).to(x.device)]

    def _windows(self, grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, list[int]]:
        """(merge-group order, window by window, frame by frame; patch bounds of windows)."""
        s = self.settings
        merge = s.spatial_merge_size
        side = s.window_size // merge // s.patch_size  # merge groups per window side
        order: list[np.ndarray] = []
        bounds = [0]
        offset = 0
        for t, h, w in grids:
            rows, cols = h // merge, w // merge
            groups = np.arange(t * rows * cols).reshape(t, rows, cols) + offset
            for frame in groups:
                for top, left in itertools.product(range(0, rows, side), range(0, cols, side)):
                    window = frame[top : top + side, left : left + side].reshape(-1)
                    order.append(window)
                    bounds.append(bounds[-1] + window.size * merge * merge)
            offset += t * rows * cols
        return np.concatenate(order), bounds

    def _rotary(
        self, grids: list[tuple[int, int, int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [patches, head_dim]: half the rotary frequencies read each patch's row,
        the other half its column, in the merge-group-major order of the patches."""
        s = self.settings
        merge = s.spatial_merge_size
        rows, cols = [], []
        for t, h, w in grids:
            r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            shape = (h // merge, merge, w // merge, merge)
            rows.append(np.tile(r.reshape(shape).transpose(0, 2, 1, 3).reshape(-1), t))
            cols.append(np.tile(c.reshape(shape).transpose(0, 2, 1, 3).reshape(-1), t))
        head_dim = s.embed_dim // s.num_heads
        quarter = head_dim // 2
        inv_freq = 1.0 / (
            s.rope_theta
            ** (torch.arange(0, quarter, 2, dtype=torch.float32, device=device) / quarter)
        )
        row = torch.from_numpy(np.concatenate(rows)).to(device).float()[:, None] * inv_freq
        col = torch.from_numpy(np.concatenate(cols)).to(device).float()[:, None] * inv_freq
        freqs = torch.cat([row, col], dim=-1)
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos(), angles.sin()
