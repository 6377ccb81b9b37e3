"""A synthetic VideoChat-TPO release: the official layout filled with seeded random values.

The real weights (16.2 GB) cannot be downloaded where tests run. ``write_synthetic_release`` writes a folder
with the release's file set (``model.safetensors.index.json`` + shards + ``config.json`` + tokenizer files):
every tensor of ``layout.release_layout(dims)``, split into the shards the official ``weight_map`` names, with
values that initialization would hide made visible (LoRA B non-zero, ``q_bias`` != ``v_bias``, norms != 1).

- ``ReleaseDims.official()``: the full 7B layout (16.2 GB, for the GPU-machine run of
  ``scripts/convert_fullsize.py``);
- ``small_config()`` / ``small_dims()``: the same tensor names with fewer layers and smaller widths (the
  CI variant, a few MB); converting it with ``--config`` set to ``small_config()`` gives a loadable model.

Tensors are generated and written one at a time (``SafetensorsWriter``), so the 16 GB release is made
with a few hundred MB of RAM.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from tpo_core.config import (
    LLMConfig,
    LoRAConfig,
    MaskHeadConfig,
    QFormerConfig,
    RegionHeadConfig,
    TemporalHeadConfig,
    TPOConfig,
    VisionConfig,
)

from .io import INDEX, SafetensorsWriter
from .layout import DTYPE_BYTES, Layout, ReleaseDims, layout_bytes, release_layout

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "int64": torch.int64}


def small_config() -> TPOConfig:
    """A small tpo-edge config whose release layout has the official names (same patterns, fewer layers).

    The vocabulary stays the release's 32000 + 7 so the release tokenizer applies; the vision encoder builds
    depth - 1 blocks like the release (``return_index`` -2); MLP widths follow the release's rules (region and
    ``<track_box>`` MLPs at half the LLM width, the SAM2 prompt and box MLPs at the LLM width).
    """
    d = 64
    return TPOConfig(
        preset="videochat-tpo-small-synthetic",
        vision=VisionConfig(img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=3, num_blocks_built=2,
                            num_heads=4, pos_emb_frames=4),
        qformer=QFormerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, num_query_tokens=4,
                              num_extra_query_tokens=4, dropout=0.0),
        llm=LLMConfig(vocab_size=32000, hidden_size=d, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                      max_position_embeddings=512, max_context=256, lora=LoRAConfig(r=4, alpha=8, dropout=0.0)),
        region=RegionHeadConfig(hidden_dim=d // 2),
        temporal=TemporalHeadConfig(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64,
                                    num_queries=10, num_dummy_tokens=4, max_clips=32, dropout=0.0),
        mask=MaskHeadConfig(image_size=128, hiera_embed_dim=8, hiera_num_heads=1, hiera_stages=(1, 1, 2, 1),
                            hiera_global_attn_blocks=(3,), hiera_window_spec=(4, 4, 4, 4),
                            backbone_channel_list=(64, 32, 16, 8), hidden_dim=32, mem_dim=16, num_maskmem=7,
                            memory_attention_layers=2, prompt_mlp_dim=d, box_mlp_dim=d),
        loc_encoder_hidden=d // 2,
        max_new_tokens=16,
    )


def small_dims() -> ReleaseDims:
    """The release sizes of ``small_config()`` (CG-DETR shrunk too: it is kept verbatim, never run)."""
    return ReleaseDims.for_config(small_config(), cg_dim=16, cg_ffn=32, cg_txt_dim=24, cg_vid_dim=10,
                                  cg_dummies=3, cg_prompts=2, cg_text_positions=8, qf_vocab=50, qf_positions=16)


def release_config_for(config: TPOConfig, official: dict) -> dict:
    """The release's ``config.json`` with the sizes it states replaced by ``config``'s."""
    data = json.loads(json.dumps(official))
    mc = data["model_config"]
    v = config.vision
    mc["vision_encoder"].update(img_size=v.img_size, patch_size=v.patch_size, d_model=v.embed_dim,
                                encoder_embed_dim=v.embed_dim, encoder_depth=v.depth, encoder_num_heads=v.num_heads,
                                num_frames=v.num_frames, tubelet_size=v.tubelet_size,
                                return_index=v.num_blocks_built - v.depth - 1)
    mc["bridge"].update(num_query_token=config.qformer.num_query_tokens,
                        extra_num_query_token=config.qformer.num_extra_query_tokens)
    lora = config.llm.lora
    mc["llm"].update(hidden_size=config.llm.hidden_size, lora_r=lora.r, lora_alpha=lora.alpha,
                     lora_dropout=lora.dropout)
    data["hidden_size"] = config.llm.hidden_size
    return data


_FIRST_INDEX = re.compile(r"^(.*?\.)(\d+)(\..*)$")


def _layer_counts(names) -> dict[str, int]:
    """Name prefix before the first integer component -> number of indices used there."""
    counts: dict[str, int] = {}
    for name in names:
        m = _FIRST_INDEX.match(name)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    return counts


def shard_assignment(names, official_map: dict[str, str]) -> dict[str, str]:
    """name -> shard file, as the official ``weight_map`` places it.

    With fewer layers than the release, layer i of n takes the shard of official layer ``i * N // n`` (so a
    small variant spreads over the same shards); names the release lacks take the shard of their pattern.
    """
    names = list(names)
    official_counts, counts = _layer_counts(official_map), _layer_counts(names)
    by_pattern: dict[str, str] = {}
    for name, shard in official_map.items():
        by_pattern.setdefault(re.sub(r"\d+", "N", name), shard)
    out = {}
    for name in names:
        probe = name
        m = _FIRST_INDEX.match(name)
        if m and m.group(1) in official_counts:
            index = int(m.group(2)) * official_counts[m.group(1)] // counts[m.group(1)]
            probe = f"{m.group(1)}{index}{m.group(3)}"
        out[name] = (official_map.get(probe) or official_map.get(name) or by_pattern.get(re.sub(r"\d+", "N", name))
                     or sorted(set(official_map.values()))[-1])
    return out


def synthetic_tensor(name: str, shape: tuple[int, ...], dtype: str, gen: torch.Generator) -> torch.Tensor:
    """Seeded values that keep a forward pass finite but show any mix-up: no zeros, no ones, no symmetry."""
    if dtype == "int64":
        return torch.arange(shape[-1], dtype=torch.int64).expand(shape).contiguous()
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    is_norm = re.search(r"(norm\d?|LayerNorm|layer_norm|neck\.\d+|mask_downscaling\.[14]|output_upscaling\.1|"
                        r"encoder\.\d+)\.weight$", name) and len(shape) == 1
    if is_norm:
        x = 1.0 + 0.1 * x  # norms != 1
    elif leaf in ("bias", "q_bias", "v_bias", "in_proj_bias", "gamma") or len(shape) == 1:
        x = 0.05 * x
    elif "lora_B" in name:
        x = 0.05 * x  # peft initializes B to zero; here it is not
    else:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        x = x / max(fan_in, 1) ** 0.5
    return x.to(TORCH_DTYPES[dtype])


def write_synthetic_release(out: str | Path, fixtures: str | Path, dims: ReleaseDims | None = None,
                            config: TPOConfig | None = None, seed: int = 0, log=None) -> Path:
    """Write a synthetic release with sizes ``dims`` into ``out``.

    fixtures: a folder with the release's ``model.safetensors.index.json``, ``config.json`` and tokenizer files
    (``tests/fixtures/videochat_tpo``). ``config``: the tpo-edge config ``dims`` came from (its sizes go into
    the written ``config.json``); None for the official sizes (the release's ``config.json`` is copied).
    """
    out, fixtures = Path(out), Path(fixtures)
    dims = dims or ReleaseDims.official()
    official_index = json.loads((fixtures / INDEX).read_text())
    layout: Layout = release_layout(dims)
    shards = shard_assignment(layout, official_index["weight_map"])
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for shard in sorted(set(shards.values())):
        names = [n for n in layout if shards[n] == shard]
        entries = {n: (layout[n][0], TORCH_DTYPES[layout[n][1]]) for n in names}
        writer = SafetensorsWriter(out / shard, entries, {"format": "pt"})
        for n in names:
            writer.write(n, synthetic_tensor(n, *layout[n], gen))
        writer.close()
        if log:
            log(f"  wrote {shard}: {len(names)} tensors")
    index = {"metadata": {"total_size": layout_bytes(layout)}, "weight_map": {n: shards[n] for n in sorted(layout)}}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    official_cfg = json.loads((fixtures / "config.json").read_text())
    cfg = official_cfg if config is None else release_config_for(config, official_cfg)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(fixtures / name, out / name)
    return out


__all__ = ["small_config", "small_dims", "write_synthetic_release", "synthetic_tensor", "shard_assignment",
           "DTYPE_BYTES"]
