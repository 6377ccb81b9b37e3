"""Region head: task embedding ``[B, D_llm]`` (+ ViT patch tokens ``[B, T, P, Dv]``) -> normalized ``xyxy [B, 4]``.

Release (``PointerConfig.enabled`` off): MLP ``D_llm -> hidden -> 4`` with ReLU and no output activation (the box
can leave ``[0, 1]`` or have swapped corners; ``runtime.contract.postprocess.box_to_pixels`` clamps and orders
them). The release's ``loc_decoder.0.*`` / ``loc_decoder.2.*`` (an ``nn.Sequential(Linear, ReLU, Linear)``) map
to ``mlp.0.*`` / ``mlp.2.*`` here.

Pointer (``PointerConfig.enabled``, the tiny preset): ``pointer.*``, a ``PointerHead`` that attends from the task
embedding over the patch tokens (``modeling/heads/pointer.py``); no ``mlp``.
"""

from __future__ import annotations

import torch
from torch import nn

from tpo_core.config import PointerConfig, RegionHeadConfig, VisionConfig

from .pointer import PointerHead


class RegionHead(nn.Module):
    """``task_emb [B, D_llm]`` (, ``patch_tokens [B, T, P, Dv]`` with the pointer) -> ``xyxy [B, 4]``."""

    def __init__(self, cfg: RegionHeadConfig, llm_dim: int, pointer: PointerConfig | None = None,
                 vision: VisionConfig | None = None):
        super().__init__()
        if llm_dim <= 0:
            raise ValueError(f"RegionHead: llm_dim must be a positive int, got {llm_dim!r}")
        self.llm_dim = llm_dim
        self.uses_patches = bool(pointer is not None and pointer.enabled)
        if self.uses_patches:
            if vision is None:
                raise ValueError("RegionHead with the pointer needs the VisionConfig (patch grid, frames, width)")
            self.pointer = build_pointer(pointer, llm_dim, vision)
        else:
            self.mlp = nn.Sequential(nn.Linear(llm_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 4))

    def forward(self, task_emb: torch.Tensor, patch_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``task_emb [B, D_llm]`` (, ``patch_tokens [B, T, P, Dv]``) -> normalized ``xyxy [B, 4]``."""
        if task_emb.dim() != 2 or task_emb.shape[-1] != self.llm_dim:
            raise ValueError(f"RegionHead expects task_emb [B, {self.llm_dim}], got shape {tuple(task_emb.shape)}")
        if not self.uses_patches:
            return self.mlp(task_emb)
        if patch_tokens is None:
            raise ValueError("this RegionHead is a pointer head (config pointer.enabled): pass patch_tokens "
                             "[B, T, P, Dv] from TPOModel.encode_video_patches")
        return self.pointer(task_emb, patch_tokens)


def build_pointer(cfg: PointerConfig, llm_dim: int, vision: VisionConfig) -> PointerHead:
    """A ``PointerHead`` reading the task embedding (width ``llm_dim``) over ``vision``'s patch tokens."""
    return PointerHead(cfg, llm_dim, vision.embed_dim, vision.num_frames // vision.tubelet_size,
                       vision.img_size // vision.patch_size)
