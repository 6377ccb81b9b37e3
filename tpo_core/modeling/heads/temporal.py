"""Temporal grounding head: a DETR-style span decoder (CG-DETR in spirit), our own code.

Inputs (``L <= cfg.max_clips`` frames / clips):

- ``task_emb [B, D_llm]``: the LLM hidden state at ``<temp>``; projected to ``d_model`` and appended to the
  video tokens as one "text" token (the release appends it to the text tokens of a separate text tower).
- ``frame_feats [B, L, Dv]``: per-frame features (``VideoEncoder.frame_features``).
- ``frame_times [B, L]``: each frame's time divided by the video duration, in ``[0, 1]``.
- ``frame_mask [B, L]`` bool, True = valid frame (optional; default all valid).

Encoder tokens: ``[video tokens (L) ; text token (1) ; dummy tokens (num_dummy_tokens)]``, each with a
learned type embedding; video tokens also get a sinusoidal encoding of ``frame_times * max_clips`` (the
clip index at the head's full capacity). Invalid frames are removed from every attention as keys.

Outputs (``TemporalOutput``):

- ``pred_logits [B, Q, 2]``: class logits, index 0 = foreground (a moment), index 1 = background.
- ``pred_spans [B, Q, 2]``: (center, width) normalized to the duration, in ``[0, 1]`` (sigmoid).
- ``saliency [B, L]``: ``<W_v m_i, W_t m_text> / sqrt(d_model)`` per video token ``m_i`` of the encoder
  memory; invalid frames read ``SALIENCY_FILL`` (-1e4, finite so losses and ONNX stay NaN-free).

ONNX: opset 17 with the TorchScript exporter (``dynamo=False``); attention is
``scaled_dot_product_attention`` with a boolean key mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from runtime.contract.postprocess import FOREGROUND
from tpo_core.config import SALIENCY_FILL, TemporalHeadConfig

BACKGROUND = 1 - FOREGROUND  # FOREGROUND (class 0) is the inference contract's, runtime.contract.postprocess


class TemporalOutput(NamedTuple):
    pred_logits: torch.Tensor  # [B, Q, 2], index 0 = foreground, 1 = background
    pred_spans: torch.Tensor  # [B, Q, 2], (center, width) in [0, 1]
    saliency: torch.Tensor  # [B, L]


def time_encoding(t: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal encoding ``t [B, L] -> [B, L, dim]`` of the positions ``t * scale`` (sin half, cos half)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / half))
    angle = (t.float() * scale)[..., None] * freqs  # [B, L, half]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class _Attention(nn.Module):
    """Multi-head attention ``q [B, Lq, d], kv [B, Lk, d] -> [B, Lq, d]``; ``key_mask [B, Lk]`` True = attend."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = q.shape
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(q)), self._split(self.k_proj(kv)), self._split(self.v_proj(kv)),
            attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _FFN(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention layer ``[B, N, d] -> [B, N, d]``."""

    def __init__(self, cfg: TemporalHeadConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = _Attention(d, cfg.num_heads, cfg.dropout)
        self.ffn = _FFN(d, cfg.ffn_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, key_mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: query self-attention, cross-attention to memory, FFN; ``[B, Q, d]``."""

    def __init__(self, cfg: TemporalHeadConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = _Attention(d, cfg.num_heads, cfg.dropout)
        self.cross_attn = _Attention(d, cfg.num_heads, cfg.dropout)
        self.ffn = _FFN(d, cfg.ffn_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(tgt)
        tgt = tgt + self.drop(self.self_attn(h, h))
        tgt = tgt + self.drop(self.cross_attn(self.norm2(tgt), memory, memory_mask))
        return tgt + self.drop(self.ffn(self.norm3(tgt)))


class TemporalHead(nn.Module):
    """Span decoder: ``(task_emb [B, D_llm], frame_feats [B, L, Dv], frame_times [B, L], frame_mask [B, L])
    -> TemporalOutput(pred_logits [B, Q, 2], pred_spans [B, Q, 2], saliency [B, L])``."""

    def __init__(self, cfg: TemporalHeadConfig, llm_dim: int, vision_dim: int):
        super().__init__()
        if cfg.d_model % 2:
            raise ValueError(f"TemporalHead: d_model must be even for the time encoding, got {cfg.d_model}")
        if llm_dim <= 0 or vision_dim <= 0:
            raise ValueError(f"TemporalHead: llm_dim={llm_dim} and vision_dim={vision_dim} must be positive")
        self.cfg, self.llm_dim, self.vision_dim = cfg, llm_dim, vision_dim
        d = cfg.d_model
        self.video_proj = nn.Sequential(nn.LayerNorm(vision_dim), nn.Linear(vision_dim, d))
        self.text_proj = nn.Sequential(nn.LayerNorm(llm_dim), nn.Linear(llm_dim, d))
        self.type_embed = nn.Parameter(torch.zeros(3, d))  # video, text, dummy
        self.dummy_tokens = nn.Parameter(torch.randn(1, cfg.num_dummy_tokens, d) * 0.02)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.query_embed = nn.Parameter(torch.randn(1, cfg.num_queries, d) * 0.02)
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.class_head = nn.Linear(d, 2)
        self.span_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2))
        self.saliency_video = nn.Linear(d, d)
        self.saliency_text = nn.Linear(d, d)

    def _check(self, task_emb, frame_feats, frame_times, frame_mask) -> None:
        if frame_feats.dim() != 3 or frame_feats.shape[-1] != self.vision_dim:
            raise ValueError(f"TemporalHead: frame_feats must be [B, L, {self.vision_dim}], "
                             f"got {tuple(frame_feats.shape)}")
        b, length = frame_feats.shape[0], frame_feats.shape[1]
        if length > self.cfg.max_clips:
            raise ValueError(f"TemporalHead: got L={length} frames; at most max_clips={self.cfg.max_clips} allowed")
        if task_emb.shape != (b, self.llm_dim):
            raise ValueError(f"TemporalHead: task_emb must be [{b}, {self.llm_dim}], got {tuple(task_emb.shape)}")
        if frame_times.shape != (b, length):
            raise ValueError(f"TemporalHead: frame_times must be [{b}, {length}], got {tuple(frame_times.shape)}")
        if frame_mask is not None and (frame_mask.shape != (b, length) or frame_mask.dtype != torch.bool):
            raise ValueError(f"TemporalHead: frame_mask must be bool [{b}, {length}], "
                             f"got {frame_mask.dtype} {tuple(frame_mask.shape)}")

    def encode(self, task_emb, frame_feats, frame_times, frame_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder memory ``[B, L + 1 + Nd, d]`` and its key mask ``[B, L + 1 + Nd]`` (True = valid)."""
        b, length = frame_feats.shape[0], frame_feats.shape[1]
        d, nd = self.cfg.d_model, self.cfg.num_dummy_tokens
        video = self.video_proj(frame_feats)
        video = video + time_encoding(frame_times, d, float(self.cfg.max_clips)).to(video.dtype)
        video = video + self.type_embed[0]
        text = self.text_proj(task_emb)[:, None, :] + self.type_embed[1]
        dummies = (self.dummy_tokens + self.type_embed[2]).expand(b, -1, -1)
        x = torch.cat([video, text, dummies], dim=1)
        extra = torch.ones(b, 1 + nd, dtype=torch.bool, device=x.device)
        key_mask = torch.cat([frame_mask, extra], dim=1)
        for layer in self.encoder_layers:
            x = layer(x, key_mask)
        assert x.shape[1] == length + 1 + nd, "encoder token count changed"
        return self.encoder_norm(x), key_mask

    def forward(
        self,
        task_emb: torch.Tensor,
        frame_feats: torch.Tensor,
        frame_times: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
    ) -> TemporalOutput:
        """``task_emb [B, D_llm], frame_feats [B, L, Dv], frame_times [B, L] in [0, 1], frame_mask [B, L] bool``
        -> ``TemporalOutput(pred_logits [B, Q, 2], pred_spans [B, Q, 2], saliency [B, L])``."""
        self._check(task_emb, frame_feats, frame_times, frame_mask)
        b, length = frame_feats.shape[0], frame_feats.shape[1]
        if frame_mask is None:
            frame_mask = torch.ones(b, length, dtype=torch.bool, device=frame_feats.device)
        memory, key_mask = self.encode(task_emb, frame_feats, frame_times, frame_mask)
        video_mem, text_mem = memory[:, :length], memory[:, length : length + 1]
        saliency = (self.saliency_video(video_mem) * self.saliency_text(text_mem)).sum(-1)
        saliency = (saliency / math.sqrt(self.cfg.d_model)).masked_fill(~frame_mask, SALIENCY_FILL)
        tgt = self.query_embed.expand(b, -1, -1)
        for layer in self.decoder_layers:
            tgt = layer(tgt, memory, key_mask)
        tgt = self.decoder_norm(tgt)
        return TemporalOutput(self.class_head(tgt), self.span_head(tgt).sigmoid(), saliency)
