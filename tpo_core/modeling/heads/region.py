"""Region head: task embedding ``[B, D_llm]`` -> normalized ``xyxy`` box ``[B, 4]``.

MLP ``D_llm -> hidden -> 4`` with ReLU and no output activation, as released (the box can leave
``[0, 1]`` or have swapped corners; ``runtime.contract.postprocess.box_to_pixels`` clamps and orders them).
The release's ``loc_decoder.0.*`` / ``loc_decoder.2.*`` (an ``nn.Sequential(Linear, ReLU, Linear)``) map to
``mlp.0.*`` / ``mlp.2.*`` here.
"""

from __future__ import annotations

import torch
from torch import nn

from tpo_core.config import RegionHeadConfig


class RegionHead(nn.Module):
    """``task_emb [B, D_llm] -> xyxy [B, 4]`` (normalized to the image, no sigmoid)."""

    def __init__(self, cfg: RegionHeadConfig, llm_dim: int):
        super().__init__()
        if llm_dim <= 0:
            raise ValueError(f"RegionHead: llm_dim must be a positive int, got {llm_dim!r}")
        self.llm_dim = llm_dim
        self.mlp = nn.Sequential(nn.Linear(llm_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 4))

    def forward(self, task_emb: torch.Tensor) -> torch.Tensor:
        """``task_emb [B, D_llm]`` -> normalized ``xyxy [B, 4]``."""
        if task_emb.dim() != 2 or task_emb.shape[-1] != self.llm_dim:
            raise ValueError(f"RegionHead expects task_emb [B, {self.llm_dim}], got shape {tuple(task_emb.shape)}")
        return self.mlp(task_emb)
