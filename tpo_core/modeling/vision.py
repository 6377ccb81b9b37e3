"""UMT-style video ViT (VideoChat-TPO's vision encoder), our own code.

``frames [B, T, 3, S, S]`` (normalized) -> Conv3d patch embed, kernel ``(tubelet, P, P)`` -> + fixed
sinusoidal position embedding -> ``num_blocks_built`` pre-norm transformer blocks -> ``tokens
[B, T' * (S/P)^2, D]`` with ``T' = T // tubelet``. No CLS token, no final norm (the connector owns
``vision_layernorm``).

Position embedding (as in UMT): a 1D sinusoid table over the flattened ``(t, h, w)`` index, built for
``pos_emb_frames`` temporal slots and interpolated linearly along time (``align_corners=False``) to
``num_frames``. It is a non-persistent buffer: it never appears in a state dict. It is always computed on
CPU, even under ``with torch.device("meta")``, so a model built on ``meta`` and loaded with
``load_state_dict(..., assign=True)`` has a real table; move the module with ``.to(device)`` afterwards
(``to_empty`` would wipe it: call ``reset_pos_embed()`` after ``to_empty``).

Parameter names versus the official checkpoint (``vision_encoder.*``):

=================================================  =============================================
official                                           here (``VideoEncoder``)
=================================================  =============================================
``vision_encoder.encoder.patch_embed.proj.*``      ``patch_embed.proj.*``
``vision_encoder.encoder.blocks.N.norm1/norm2.*``  ``blocks.N.norm1/norm2.*``
``vision_encoder.encoder.blocks.N.attn.qkv.weight``  ``blocks.N.attn.qkv.weight``
``...attn.q_bias`` + ``...attn.v_bias``            ``blocks.N.attn.qkv.bias`` = ``cat(q_bias, 0, v_bias)``
``...attn.proj.*``, ``...mlp.fc1/fc2.*``           ``blocks.N.attn.proj.*``, ``blocks.N.mlp.fc1/fc2.*``
=================================================  =============================================

So a loader strips the ``encoder.`` level and fuses the two biases (the key bias is zero there; a key bias
adds the same amount to every logit of a query, so it never changes the attention output anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tpo_core.config import VisionConfig


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer sinusoid table ``[num_positions, dim]`` (sin on even, cos on odd channels)."""
    pos = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]
    idx = torch.arange(dim, dtype=torch.float64, device="cpu")[None, :]
    angle = pos / torch.pow(10000.0, 2.0 * torch.div(idx, 2, rounding_mode="floor") / dim)
    table = torch.where(idx.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def video_pos_embed(base_frames: int, tokens_per_frame: int, dim: int, num_frames: int) -> torch.Tensor:
    """UMT position embedding ``[1, num_frames * tokens_per_frame, D]``.

    The 1D table over ``base_frames * tokens_per_frame`` positions is reshaped to ``[T0, HW, D]`` and
    linearly interpolated along time to ``num_frames``.
    """
    table = sinusoid_table(base_frames * tokens_per_frame, dim).reshape(base_frames, tokens_per_frame, dim)
    if num_frames != base_frames:
        table = table.permute(1, 2, 0)  # [HW, D, T0]
        table = F.interpolate(table, size=num_frames, mode="linear", align_corners=False)
        table = table.permute(2, 0, 1)  # [T, HW, D]
    return table.reshape(1, num_frames * tokens_per_frame, dim).contiguous()


class PatchEmbed3D(nn.Module):
    """``[B, 3, T, S, S] -> [B, T' * (S/P)^2, D]`` through Conv3d, kernel = stride = ``(tubelet, P, P)``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention ``[B, N, D] -> [B, N, D]`` with a fused qkv Linear and SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoEncoder(nn.Module):
    """UMT ViT video encoder: ``frames [B, T, 3, S, S] -> tokens [B, T' * (S/P)^2, D]``, ``T' = T // tubelet``.

    ``T`` may be smaller than ``cfg.num_frames`` (any multiple of ``tubelet_size``): the position embedding
    is then re-interpolated (linearly along time, from the ``pos_emb_frames`` table) to ``T'`` slots on the
    fly, exactly as if the encoder had been built for ``T`` frames. ``S`` must equal ``cfg.img_size``.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3D(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks_built))
        self.base_slots = max(1, cfg.pos_emb_frames // cfg.tubelet_size)
        self.max_slots = cfg.num_frames // cfg.tubelet_size
        pos = video_pos_embed(self.base_slots, cfg.tokens_per_frame, cfg.embed_dim, self.max_slots)
        self.register_buffer("pos_embed", pos, persistent=False)  # [1, T' * HW, D], on CPU even under meta
        # cfg.patch_classes > 0: patch tokens [..., D] -> class logits [..., C]; not in forward(): the patch loss
        # trains it, and the connector's object tokens read it (TPOModel.connect)
        self.patch_classifier = nn.Linear(cfg.embed_dim, cfg.patch_classes) if cfg.patch_classes else None

    def reset_pos_embed(self) -> None:
        """Recompute the position table in place (e.g. after ``to_empty``), on the module's device."""
        pos = video_pos_embed(self.base_slots, self.cfg.tokens_per_frame, self.cfg.embed_dim, self.max_slots)
        self.pos_embed = pos.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def _pos_embed_for(self, slots: int) -> torch.Tensor:
        if slots == self.max_slots:
            return self.pos_embed
        pos = video_pos_embed(self.base_slots, self.cfg.tokens_per_frame, self.cfg.embed_dim, slots)
        return pos.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def _check_frames(self, frames: torch.Tensor) -> int:
        cfg = self.cfg
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"VideoEncoder expects frames [B, T, 3, S, S], got shape {tuple(frames.shape)}")
        t, h, w = frames.shape[1], frames.shape[3], frames.shape[4]
        if h != cfg.img_size or w != cfg.img_size:
            raise ValueError(f"VideoEncoder: frames are {h}x{w}; only {cfg.img_size}x{cfg.img_size} is allowed")
        if t < cfg.tubelet_size or t > cfg.num_frames or t % cfg.tubelet_size:
            raise ValueError(f"VideoEncoder: got T={t} frames; allowed: a multiple of tubelet_size="
                             f"{cfg.tubelet_size} between {cfg.tubelet_size} and num_frames={cfg.num_frames}")
        return t // cfg.tubelet_size

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames [B, T, 3, S, S]`` (normalized float) -> ``tokens [B, T' * (S/P)^2, D]``."""
        slots = self._check_frames(frames)
        x = self.patch_embed(frames.permute(0, 2, 1, 3, 4))  # [B, T' * HW, D]
        x = x + self._pos_embed_for(slots).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def frame_features(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Per-frame features: ``tokens [B, T' * HW, D] -> [B, T', D]``: the mean over each frame's patch tokens
        (``cfg.frame_pool = "mean"``, the release), or that mean plus the elementwise max over them
        (``"mean_max"``: a small object moves a max far more than a mean of 64 patches).

        ``num_frames`` is the number of temporal token slots ``T'`` (= frames // tubelet).
        """
        b, n, d = tokens.shape
        if num_frames <= 0 or n % num_frames:
            raise ValueError(f"frame_features: {n} tokens cannot be split into num_frames={num_frames} equal "
                             "frames; pass T' = T // tubelet_size")
        grid = tokens.reshape(b, num_frames, n // num_frames, d)
        feats = grid.mean(dim=2)
        return feats + grid.amax(dim=2) if self.cfg.frame_pool == "mean_max" else feats

    def extra_repr(self) -> str:
        return f"blocks={len(self.blocks)}, pos_embed_slots={self.base_slots}->{self.max_slots}"

