"""Pointer head: a box from a task embedding by attending over the ViT patch tokens (issue 12).

``query [B, Dq]`` (the LLM hidden state at ``<boxes>`` / ``<track>``) + ``patches [B, T, P, Dv]`` (the video
encoder's output tokens of the T sampled frame slots, ``P = (S / patch)^2`` per slot, before the connector)
-> normalized ``xyxy [B, 4]``.

Keys/values: ``LayerNorm -> Linear(Dv, d)`` of the patches plus a learned 2D position table ``[P, d]`` and a
learned frame-index table ``[T, d]`` (both initialized as sinusoids). ``num_layers`` pre-norm cross-attention
layers (``num_heads`` heads, the single query token reads all ``T * P`` keys, then an MLP) refine the query.
The box centre is the last layer's attention-weighted mean of the patch centres (averaged over heads and
summed over frames) plus a bounded offset; width and height come from a sigmoid: the box is always ordered
and inside ``[-0.25, 1.25]``. The attention-weighted position is what makes it learn fast: the head only has
to learn *which* patches match the query, not to regress coordinates from features.

Config-gated by ``PointerConfig.enabled`` (``tpo_core.config``); off, nothing here is built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tpo_core.config import PointerConfig


def _sincos(n: int, d: int) -> torch.Tensor:
    """1D sinusoid table ``[n, d]``."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(100.0) / d))[None]
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return out


def sincos_2d(side: int, d: int) -> torch.Tensor:
    """2D sinusoid table ``[side * side, d]`` (row-major): half the channels encode y, half x."""
    half = d // 2
    y = _sincos(side, half)[:, None].expand(side, side, half)
    x = _sincos(side, d - half)[None].expand(side, side, d - half)
    return torch.cat([y, x], dim=-1).reshape(side * side, d)


def patch_centres(side: int) -> torch.Tensor:
    """Normalized ``(x, y)`` centres of a ``side x side`` patch grid, row-major ``[side * side, 2]`` (on CPU)."""
    c = (torch.arange(side, dtype=torch.float32, device="cpu") + 0.5) / side
    return torch.stack([c[None].expand(side, side), c[:, None].expand(side, side)], -1).reshape(-1, 2)


class PointerLayer(nn.Module):
    """Pre-norm cross-attention of one query token over keys, then an MLP: ``q [B, 1, d], kv [B, N, d]``
    -> ``(q [B, 1, d], attention [B, N])`` (attention averaged over heads)."""

    def __init__(self, d: int, num_heads: int):
        super().__init__()
        self.h = num_heads
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = kv.shape
        dh = d // self.h
        kvn = self.norm_kv(kv)
        qh = self.q(self.norm_q(q)).view(b, 1, self.h, dh).transpose(1, 2)  # [B, H, 1, dh]
        kh = self.k(kvn).view(b, n, self.h, dh).transpose(1, 2)  # [B, H, N, dh]
        vh = self.v(kvn).view(b, n, self.h, dh).transpose(1, 2)
        attn = torch.softmax((qh @ kh.transpose(-1, -2)) * dh ** -0.5, dim=-1)  # [B, H, 1, N]
        read = (attn @ vh).transpose(1, 2).reshape(b, 1, d)
        q = q + self.o(read)
        q = q + self.mlp(self.norm_mlp(q))
        return q, attn.mean(dim=1)[:, 0]


class PointerHead(nn.Module):
    """``query [B, Dq]``, ``patches [B, T, P, Dv]`` -> normalized ``xyxy [B, 4]``; see the module docstring."""

    def __init__(self, cfg: PointerConfig, query_dim: int, vision_dim: int, num_frames: int, side: int):
        super().__init__()
        d = cfg.dim
        self.query_dim, self.vision_dim, self.num_frames, self.side = query_dim, vision_dim, num_frames, side
        self.query_in = nn.Sequential(nn.LayerNorm(query_dim), nn.Linear(query_dim, d))
        self.key_norm = nn.LayerNorm(vision_dim)
        self.key_in = nn.Linear(vision_dim, d)
        self.pos = nn.Parameter(sincos_2d(side, d))  # [P, d]
        self.frame = nn.Parameter(_sincos(num_frames, d))  # [T, d]
        self.layers = nn.ModuleList(PointerLayer(d, cfg.num_heads) for _ in range(cfg.num_layers))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 4))
        # [P, 2] (x, y), row-major like the patches; built on CPU even under meta (like the ViT's pos_embed)
        self.register_buffer("centres", patch_centres(side), persistent=False)

    def reset_centres(self) -> None:
        """Recompute the ``centres`` buffer (e.g. after ``to_empty``) on the module's device."""
        self.centres = patch_centres(self.side).to(self.key_in.weight.device)

    def check(self, query: torch.Tensor, patches: torch.Tensor) -> None:
        p = self.side * self.side
        if query.dim() != 2 or query.shape[1] != self.query_dim:
            raise ValueError(f"PointerHead expects query [B, {self.query_dim}], got shape {tuple(query.shape)}")
        if (patches.dim() != 4 or patches.shape[0] != query.shape[0] or patches.shape[2] != p
                or patches.shape[3] != self.vision_dim or not 1 <= patches.shape[1] <= self.num_frames):
            raise ValueError(f"PointerHead expects patch_tokens [B={query.shape[0]}, T<={self.num_frames}, {p}, "
                             f"{self.vision_dim}] (the vision encoder's tokens per frame slot), got shape "
                             f"{tuple(patches.shape)}")

    def forward(self, query: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``query [B, Dq]``, ``patches [B, T, P, Dv]`` -> ``xyxy [B, 4]``."""
        self.check(query, patches)
        b, t, p, _ = patches.shape
        dtype = self.key_in.weight.dtype
        kv = self.key_in(self.key_norm(patches.to(dtype))) + self.pos[None, None] + self.frame[None, :t, None]
        kv = kv.reshape(b, t * p, -1)
        q = self.query_in(query.to(dtype))[:, None]
        attn = kv.new_zeros(b, t * p)
        for layer in self.layers:
            q, attn = layer(q, kv)
        # the centre table is rebuilt in float32 after a cast (restore_buffers, reset_centres): match the weights
        where = attn.view(b, t, p).sum(dim=1) @ self.centres.to(attn.dtype)  # [B, 2] attention-weighted (x, y)
        o = self.out(q[:, 0])
        centre = where + 0.25 * torch.tanh(o[:, :2])
        size = torch.sigmoid(o[:, 2:])
        return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def split_patches(tokens: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Video-encoder tokens ``[B, T' * P, Dv]`` -> ``patch_tokens [B, T', P, Dv]``."""
    b, n, d = tokens.shape
    if num_slots <= 0 or n % num_slots:
        raise ValueError(f"split_patches: {n} tokens cannot be split into {num_slots} frame slots")
    return tokens.reshape(b, num_slots, n // num_slots, d)

