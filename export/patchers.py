"""Export-only rewrites: forms that the ONNX exporters emit cleanly and TensorRT 10 parses well.

Nothing here changes model code in ``tpo_core``; wrappers in ``export/`` call these instead of the HF
attention/RoPE implementations (whose SDPA/mask/cache machinery traces into control flow, ``aten::sdpa``
variants or dynamic-cache objects).

- ``rope_cos_sin``: real-valued RoPE tables from ``position_ids`` (float32 math, as HF computes them).
- ``apply_rope``: the ``rotate_half`` form (Slice, Neg, Concat, Mul, Add) of HF Llama/Mistral.
- ``causal_padding_mask``: bool ``[B, 1, T, P+T]`` from the cache length and a 0/1 attention mask.
- ``grouped_attention``: MatMul -> Where(mask) -> Softmax(float32) -> MatMul with GQA as Expand+Reshape;
  masked scores are *replaced* (``Where``), not added to, so a fully masked row (left padding) gives a
  uniform row instead of NaN, in fp16 too.
- ``eval_mode``: a context manager that puts a module in eval mode and restores the training flags.
- ``frame_patch_embed``: the video encoder's Conv3d patch embedding with a temporal kernel of 1 as one Conv2d over
  the frames (same weights, same token order). Measured on an H200 (ONNX Runtime 1.31.1, cuDNN 9.19): the fp16
  Conv3d of the 7B preset (3 -> 1024, kernel and stride (1, 16, 16), 16 frames of 224^2) fails in cuDNN
  frontend's heuristic query (HEURISTIC_QUERY_FAILED), while the tiny preset's Conv3d runs.

The SAM2 memory path needs no patch: ``MaskHead`` already uses transformers' real-valued 2D RoPE and a
fixed-capacity memory with validity masks (see ``export/components.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B, T] int64, inv_freq [Hd/2] float32 -> cos, sin [B, 1, T, Hd] in ``dtype``."""
    freqs = position_ids.to(torch.float32)[:, :, None] * inv_freq.to(torch.float32)[None, None, :]  # [B, T, Hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [B, T, Hd]
    cos = (emb.cos() * scaling).to(dtype)[:, None]
    sin = (emb.sin() * scaling).to(dtype)[:, None]
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Hd], cos/sin [B, 1, T, Hd] -> [B, H, T, Hd]."""
    return x * cos + rotate_half(x) * sin


def causal_padding_mask(attention_mask: torch.Tensor, past_len: torch.Tensor | int, seq_len: int) -> torch.Tensor:
    """attention_mask [B, P+T] (1 = attend) -> bool [B, 1, T, P+T]: key j visible to query i iff
    ``j <= P + i`` and ``attention_mask[b, j] == 1``."""
    total = attention_mask.shape[1]
    key_pos = torch.arange(total, device=attention_mask.device)[None, :]  # [1, P+T]
    query_pos = torch.arange(seq_len, device=attention_mask.device)[:, None] + past_len  # [T, 1]
    causal = key_pos <= query_pos  # [T, P+T]
    return causal[None, None] & (attention_mask[:, None, None, :] != 0)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """q [B, H, T, Hd], k/v [B, KVH, S, Hd], mask bool [B, 1, T, S] -> [B, T, H * Hd].

    Scores and softmax in float32 (HF eager does the softmax in float32), result cast back to q's dtype.
    """
    b, h, t, hd = q.shape
    kvh = k.shape[1]
    if h != kvh:
        group = h // kvh
        k = k[:, :, None].expand(b, kvh, group, k.shape[2], hd).reshape(b, h, k.shape[2], hd)
        v = v[:, :, None].expand(b, kvh, group, v.shape[2], hd).reshape(b, h, v.shape[2], hd)
    scores = torch.matmul(q, k.transpose(2, 3)).to(torch.float32) * scale  # [B, H, T, S]
    scores = torch.where(mask, scores, torch.full_like(scores, torch.finfo(torch.float32).min))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # [B, H, T, Hd]
    return out.transpose(1, 2).reshape(b, t, h * hd)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch ``module`` (and children) to eval mode; the training flags are restored after."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags.items():
            m.train(flag)




@contextlib.contextmanager
def frame_patch_embed(vision: nn.Module) -> Iterator[nn.Module]:
    """Within the context, ``vision.patch_embed`` (Conv3d, kernel = stride = ``(1, P, P)``) computes
    ``[B, 3, T, S, S] -> [B, T * (S/P)^2, D]`` as a Conv2d over the ``B * T`` frames (no-op for tubelets > 1)."""
    pe = vision.patch_embed
    conv = pe.proj
    if conv.kernel_size[0] != 1:
        yield vision
        return

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = torch.nn.functional.conv2d(x.transpose(1, 2).reshape(b * t, c, h, w), conv.weight[:, :, 0], conv.bias,
                                       stride=conv.stride[1:])  # [B * T, D, h', w']
        d = y.shape[1]
        return y.reshape(b, t, d, -1).permute(0, 1, 3, 2).reshape(b, -1, d)  # t-major, as Conv3d's flatten

    pe.forward = forward
    try:
        yield vision
    finally:
        del pe.forward  # the class's Conv3d forward again
