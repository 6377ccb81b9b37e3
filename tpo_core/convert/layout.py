"""The official VideoChat-TPO release's tensor layout: every tensor name with its shape and dtype.

``release_layout(dims)`` lists the tensors of a release built with the sizes ``dims`` (``ReleaseDims``), in
the order the release's modules register them. The names and shapes follow the release's module structure
(OpenGVLab/TPO, commit ed733bd: UMT ViT with ``q_bias``/``v_bias``, a BERT ``BertLMHeadModel`` Q-Former whose
text branch is kept, a peft-wrapped Mistral, the SAM2 Hiera video predictor as ``sam.*``, the CG-DETR temporal
model as ``cg_model.*``); they are written here from those facts, not imported. ``ReleaseDims.official()`` gives
the released 7B sizes: its layout has exactly the 2594 names of the release's ``model.safetensors.index.json``
and a byte total equal to the index's ``metadata.total_size`` (``tests/test_convert_layout.py``).

``ReleaseDims.for_config(config)`` gives the release sizes whose conversion loads into ``TPOModel(config)``:
the small variant the tests build uses it with a small ``TPOConfig`` (fewer layers, smaller widths, the same
name patterns), so the conversion table never depends on sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tpo_core.config import TPOConfig, videochat_tpo_7b_config

Layout = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype name: "bfloat16" or "int64")

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ReleaseDims:
    """Sizes of a VideoChat-TPO release (defaults: the released 7B). Widths in channels, counts in layers."""

    # UMT ViT (``vision_encoder.encoder``): depth-1 blocks are built (return_index -2)
    vit_dim: int = 1024
    vit_blocks: int = 23
    vit_patch: int = 16
    vit_tubelet: int = 1
    vit_mlp: int = 4096
    # Q-Former (BERT-base with cross-attention every 2nd layer) and its query tokens
    qf_dim: int = 768
    qf_layers: int = 12
    qf_ffn: int = 3072
    qf_cross_every: int = 2
    qf_vocab: int = 30523  # bert-base-uncased + the "[DEC]" bos token the release adds
    qf_positions: int = 512
    num_query: int = 32
    num_extra_query: int = 64
    token_merge: int = 4  # merge_proj: Linear(qf_dim * 4, llm_dim)
    # Mistral + LoRA (peft) on q,k,v,o,gate,up,down and lm_head
    llm_dim: int = 4096
    llm_layers: int = 32
    llm_kv_dim: int = 1024
    llm_ffn: int = 14336
    llm_vocab: int = 32007  # 32000 base + 7 task tokens, embed_tokens and lm_head alike
    lora_r: int = 16
    # TPO heads: loc_encoder/loc_decoder hidden llm_dim // 2, MLPs of hidden llm_dim (track_embed*, temporal)
    # SAM2 (Hiera) in ``sam.*``
    hiera_dim: int = 144
    hiera_stages: tuple[int, ...] = (2, 6, 36, 4)
    hiera_window0: int = 8
    hiera_pos_bkg: int = 7
    sam_dim: int = 256
    sam_mem_dim: int = 64
    sam_memattn_layers: int = 4
    sam_num_maskmem: int = 7
    # CG-DETR (``cg_model.*``), kept verbatim
    cg_dim: int = 256
    cg_ffn: int = 1024
    cg_txt_dim: int = 4096
    cg_vid_dim: int = 770
    cg_queries: int = 10
    cg_dummies: int = 45
    cg_prompts: int = 10
    cg_text_positions: int = 100
    cg_enc_layers: int = 3
    cg_dec_layers: int = 3
    cg_t2v_layers: int = 2
    cg_dummy_layers: int = 2

    @classmethod
    def official(cls) -> ReleaseDims:
        return cls()

    @classmethod
    def for_config(cls, config: TPOConfig, **overrides) -> ReleaseDims:
        """The release sizes whose conversion fits ``TPOModel(config)`` (CG-DETR sizes from ``overrides``)."""
        v, q, llm, m = config.vision, config.qformer, config.llm, config.mask
        kv_dim = llm.num_kv_heads * llm.head_dim
        fields = dict(
            vit_dim=v.embed_dim, vit_blocks=v.num_blocks_built, vit_patch=v.patch_size, vit_tubelet=v.tubelet_size,
            vit_mlp=int(v.embed_dim * v.mlp_ratio), qf_dim=q.hidden_size, qf_layers=q.num_layers,
            qf_ffn=q.intermediate_size, qf_cross_every=q.cross_attention_frequency, num_query=q.num_query_tokens,
            num_extra_query=q.num_extra_query_tokens, llm_dim=llm.hidden_size, llm_layers=llm.num_layers,
            llm_kv_dim=kv_dim, llm_ffn=llm.intermediate_size, llm_vocab=llm.vocab_size + 7, lora_r=llm.lora.r,
            hiera_dim=m.hiera_embed_dim, hiera_stages=tuple(m.hiera_stages), hiera_window0=m.hiera_window_spec[0],
            sam_dim=m.hidden_dim, sam_mem_dim=m.mem_dim, sam_memattn_layers=m.memory_attention_layers,
            sam_num_maskmem=m.num_maskmem,
        )
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes) -> ReleaseDims:
        return dataclasses.replace(self, **changes)


def _linear(out: Layout, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = ((n_out, n_in), "bfloat16")
    if bias:
        out[f"{name}.bias"] = ((n_out,), "bfloat16")


def _norm(out: Layout, name: str, n: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = ((n,), "bfloat16")
    if bias:
        out[f"{name}.bias"] = ((n,), "bfloat16")


def _conv(out: Layout, name: str, n_out: int, n_in: int, *kernel: int) -> None:
    out[f"{name}.weight"] = ((n_out, n_in, *kernel), "bfloat16")
    out[f"{name}.bias"] = ((n_out,), "bfloat16")


def _param(out: Layout, name: str, *shape: int) -> None:
    out[name] = (tuple(shape), "bfloat16")


def _mlp(out: Layout, name: str, dims: list[int]) -> None:
    """DETR-style MLP: ``name.layers.i`` Linear(dims[i], dims[i+1])."""
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        _linear(out, f"{name}.layers.{i}", b, a)


def _vision(out: Layout, d: ReleaseDims) -> None:
    p = "vision_encoder.encoder"
    _conv(out, f"{p}.patch_embed.proj", d.vit_dim, 3, d.vit_tubelet, d.vit_patch, d.vit_patch)
    for i in range(d.vit_blocks):
        b = f"{p}.blocks.{i}"
        _norm(out, f"{b}.norm1", d.vit_dim)
        _param(out, f"{b}.attn.q_bias", d.vit_dim)
        _param(out, f"{b}.attn.v_bias", d.vit_dim)
        _linear(out, f"{b}.attn.qkv", 3 * d.vit_dim, d.vit_dim, bias=False)
        _linear(out, f"{b}.attn.proj", d.vit_dim, d.vit_dim)
        _norm(out, f"{b}.norm2", d.vit_dim)
        _linear(out, f"{b}.mlp.fc1", d.vit_mlp, d.vit_dim)
        _linear(out, f"{b}.mlp.fc2", d.vit_dim, d.vit_mlp)
    _norm(out, "vision_layernorm", d.vit_dim)


def _bert_attention(out: Layout, name: str, dim: int, kv_dim: int) -> None:
    _linear(out, f"{name}.self.query", dim, dim)
    _linear(out, f"{name}.self.key", dim, kv_dim)
    _linear(out, f"{name}.self.value", dim, kv_dim)
    _linear(out, f"{name}.output.dense", dim, dim)
    _norm(out, f"{name}.output.LayerNorm", dim)


def _qformer(out: Layout, d: ReleaseDims) -> None:
    p = "qformer.bert"
    _param(out, f"{p}.embeddings.word_embeddings.weight", d.qf_vocab, d.qf_dim)
    _param(out, f"{p}.embeddings.position_embeddings.weight", d.qf_positions, d.qf_dim)
    _norm(out, f"{p}.embeddings.LayerNorm", d.qf_dim)
    out[f"{p}.embeddings.position_ids"] = ((1, d.qf_positions), "int64")
    for i in range(d.qf_layers):
        b = f"{p}.encoder.layer.{i}"
        _bert_attention(out, f"{b}.attention", d.qf_dim, d.qf_dim)
        if i % d.qf_cross_every == 0:
            _bert_attention(out, f"{b}.crossattention", d.qf_dim, d.vit_dim)
        for suffix in ("", "_query"):
            _linear(out, f"{b}.intermediate{suffix}.dense", d.qf_ffn, d.qf_dim)
            _linear(out, f"{b}.output{suffix}.dense", d.qf_dim, d.qf_ffn)
            _norm(out, f"{b}.output{suffix}.LayerNorm", d.qf_dim)
    _param(out, "query_tokens", 1, d.num_query, d.qf_dim)
    _param(out, "extra_query_tokens", 1, d.num_extra_query, d.qf_dim)
    _linear(out, "project_up", d.llm_dim, d.qf_dim)
    _linear(out, "project_down", d.qf_dim, d.llm_dim)
    _linear(out, "merge_proj", d.llm_dim, d.qf_dim * d.token_merge)


def _lora_linear(out: Layout, name: str, n_out: int, n_in: int, r: int) -> None:
    out[f"{name}.base_layer.weight"] = ((n_out, n_in), "bfloat16")
    out[f"{name}.lora_A.default.weight"] = ((r, n_in), "bfloat16")
    out[f"{name}.lora_B.default.weight"] = ((n_out, r), "bfloat16")


def _llm(out: Layout, d: ReleaseDims) -> None:
    p = "lm.base_model.model"
    _param(out, f"{p}.model.embed_tokens.weight", d.llm_vocab, d.llm_dim)
    shapes = {"q_proj": (d.llm_dim, d.llm_dim), "k_proj": (d.llm_kv_dim, d.llm_dim),
              "v_proj": (d.llm_kv_dim, d.llm_dim), "o_proj": (d.llm_dim, d.llm_dim),
              "gate_proj": (d.llm_ffn, d.llm_dim), "up_proj": (d.llm_ffn, d.llm_dim),
              "down_proj": (d.llm_dim, d.llm_ffn)}
    for i in range(d.llm_layers):
        b = f"{p}.model.layers.{i}"
        for mod in LORA_MODULES:
            group = "mlp" if mod in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            _lora_linear(out, f"{b}.{group}.{mod}", *shapes[mod], d.lora_r)
        _norm(out, f"{b}.input_layernorm", d.llm_dim, bias=False)
        _norm(out, f"{b}.post_attention_layernorm", d.llm_dim, bias=False)
    _norm(out, f"{p}.model.norm", d.llm_dim, bias=False)
    _lora_linear(out, f"{p}.lm_head", d.llm_vocab, d.llm_dim, d.lora_r)


def _tpo_heads(out: Layout, d: ReleaseDims) -> None:
    h = d.llm_dim
    _linear(out, "loc_encoder.0", h // 2, 4)
    _linear(out, "loc_encoder.2", h, h // 2)
    _linear(out, "loc_decoder.0", h // 2, h)
    _linear(out, "loc_decoder.2", 4, h // 2)
    _mlp(out, "track_embed", [h, h, 3 * d.sam_dim])
    _mlp(out, "track_embed_decode2", [h, h, 4])
    _mlp(out, "temporal_embed", [h, h, 2])
    _mlp(out, "action_embed", [h, h, 1])
    for token in ("track_token", "temporal_token", "box_token"):
        _param(out, token, 1, 1, h)


def _hiera(out: Layout, d: ReleaseDims) -> None:
    p = "sam.image_encoder"
    c0 = d.hiera_dim
    _conv(out, f"{p}.trunk.patch_embed.proj", c0, 3, 7, 7)
    _param(out, f"{p}.trunk.pos_embed", 1, c0, d.hiera_pos_bkg, d.hiera_pos_bkg)
    _param(out, f"{p}.trunk.pos_embed_window", 1, c0, d.hiera_window0, d.hiera_window0)
    block, dim = 0, c0
    for stage, count in enumerate(d.hiera_stages):
        dim_out = c0 * 2**stage
        for _ in range(count):
            b = f"{p}.trunk.blocks.{block}"
            _norm(out, f"{b}.norm1", dim)
            _linear(out, f"{b}.attn.qkv", 3 * dim_out, dim)
            _linear(out, f"{b}.attn.proj", dim_out, dim_out)
            _norm(out, f"{b}.norm2", dim_out)
            _mlp(out, f"{b}.mlp", [dim_out, 4 * dim_out, dim_out])
            if dim != dim_out:
                _linear(out, f"{b}.proj", dim_out, dim)
            block, dim = block + 1, dim_out
    for i, ch in enumerate(c0 * 2**s for s in reversed(range(len(d.hiera_stages)))):
        _conv(out, f"{p}.neck.convs.{i}.conv", d.sam_dim, ch, 1, 1)


def _sam_attention(out: Layout, name: str, dim: int, internal: int, kv_dim: int | None = None) -> None:
    _linear(out, f"{name}.q_proj", internal, dim)
    _linear(out, f"{name}.k_proj", internal, kv_dim or dim)
    _linear(out, f"{name}.v_proj", internal, kv_dim or dim)
    _linear(out, f"{name}.out_proj", dim, internal)


def _sam_heads(out: Layout, d: ReleaseDims) -> None:
    c, cm = d.sam_dim, d.sam_mem_dim
    _mlp(out, "sam.obj_ptr_proj", [c, c, c, c])
    for i in range(d.sam_memattn_layers):
        b = f"sam.memory_attention.layers.{i}"
        _sam_attention(out, f"{b}.self_attn", c, c)
        _sam_attention(out, f"{b}.cross_attn_image", c, c, kv_dim=cm)
        _linear(out, f"{b}.linear1", 8 * c, c)
        _linear(out, f"{b}.linear2", c, 8 * c)
        for n in (1, 2, 3):
            _norm(out, f"{b}.norm{n}", c)
    _norm(out, "sam.memory_attention.norm", c)
    me = "sam.memory_encoder"
    ch = 1
    for k in range(4):  # mask downsampler: 4 stride-2 convs (1 -> 4 -> 16 -> 64 -> 256 channels)
        _conv(out, f"{me}.mask_downsampler.encoder.{3 * k}", ch * 4, ch, 3, 3)
        _norm(out, f"{me}.mask_downsampler.encoder.{3 * k + 1}", ch * 4)
        ch *= 4
    _conv(out, f"{me}.mask_downsampler.encoder.12", c, ch, 1, 1)
    _conv(out, f"{me}.pix_feat_proj", c, c, 1, 1)
    for i in range(2):
        f = f"{me}.fuser.layers.{i}"
        out[f"{f}.dwconv.weight"] = ((c, 1, 7, 7), "bfloat16")
        out[f"{f}.dwconv.bias"] = ((c,), "bfloat16")
        _norm(out, f"{f}.norm", c)
        _linear(out, f"{f}.pwconv1", 4 * c, c)
        _linear(out, f"{f}.pwconv2", c, 4 * c)
        _param(out, f"{f}.gamma", c)
    _conv(out, f"{me}.out_proj", cm, c, 1, 1)
    _param(out, "sam.maskmem_tpos_enc", d.sam_num_maskmem, 1, 1, cm)
    _param(out, "sam.no_mem_embed", 1, 1, c)
    _param(out, "sam.no_mem_pos_enc", 1, 1, c)
    _param(out, "sam.no_obj_ptr", 1, c)
    _conv(out, "sam.mask_downsample", 1, 1, 4, 4)


def _sam_prompt_and_decoder(out: Layout, d: ReleaseDims) -> None:
    c = d.sam_dim
    pe = "sam.sam_prompt_encoder"
    _param(out, f"{pe}.pe_layer.positional_encoding_gaussian_matrix", 2, c // 2)
    for i in range(4):
        _param(out, f"{pe}.point_embeddings.{i}.weight", 1, c)
    _param(out, f"{pe}.not_a_point_embed.weight", 1, c)
    _conv(out, f"{pe}.mask_downscaling.0", 4, 1, 2, 2)
    _norm(out, f"{pe}.mask_downscaling.1", 4)
    _conv(out, f"{pe}.mask_downscaling.3", 16, 4, 2, 2)
    _norm(out, f"{pe}.mask_downscaling.4", 16)
    _conv(out, f"{pe}.mask_downscaling.6", c, 16, 1, 1)
    _param(out, f"{pe}.no_mask_embed.weight", 1, c)
    md = "sam.sam_mask_decoder"
    for i in range(2):
        b = f"{md}.transformer.layers.{i}"
        _sam_attention(out, f"{b}.self_attn", c, c)
        _norm(out, f"{b}.norm1", c)
        _sam_attention(out, f"{b}.cross_attn_token_to_image", c, c // 2)
        _norm(out, f"{b}.norm2", c)
        _mlp(out, f"{b}.mlp", [c, 8 * c, c])
        _norm(out, f"{b}.norm3", c)
        _norm(out, f"{b}.norm4", c)
        _sam_attention(out, f"{b}.cross_attn_image_to_token", c, c // 2)
    _sam_attention(out, f"{md}.transformer.final_attn_token_to_image", c, c // 2)
    _norm(out, f"{md}.transformer.norm_final_attn", c)
    _param(out, f"{md}.iou_token.weight", 1, c)
    _param(out, f"{md}.mask_tokens.weight", 4, c)
    _param(out, f"{md}.obj_score_token.weight", 1, c)
    out[f"{md}.output_upscaling.0.weight"] = ((c, c // 4, 2, 2), "bfloat16")  # ConvTranspose2d: [in, out, k, k]
    out[f"{md}.output_upscaling.0.bias"] = ((c // 4,), "bfloat16")
    _norm(out, f"{md}.output_upscaling.1", c // 4)
    out[f"{md}.output_upscaling.3.weight"] = ((c // 4, c // 8, 2, 2), "bfloat16")
    out[f"{md}.output_upscaling.3.bias"] = ((c // 8,), "bfloat16")
    _conv(out, f"{md}.conv_s0", c // 8, c, 1, 1)
    _conv(out, f"{md}.conv_s1", c // 4, c, 1, 1)
    for i in range(4):
        _mlp(out, f"{md}.output_hypernetworks_mlps.{i}", [c, c, c, c // 8])
    _mlp(out, f"{md}.iou_prediction_head", [c, c, c, 4])
    _mlp(out, f"{md}.pred_obj_score_head", [c, c, c, 1])


def _cg_encoder_layer(out: Layout, name: str, d: ReleaseDims, self_attn_in_proj: bool = True) -> None:
    if self_attn_in_proj:
        _param(out, f"{name}.self_attn.in_proj_weight", 3 * d.cg_dim, d.cg_dim)
        _param(out, f"{name}.self_attn.in_proj_bias", 3 * d.cg_dim)
    _linear(out, f"{name}.self_attn.out_proj", d.cg_dim, d.cg_dim)
    _linear(out, f"{name}.linear1", d.cg_ffn, d.cg_dim)
    _linear(out, f"{name}.linear2", d.cg_dim, d.cg_ffn)
    _norm(out, f"{name}.norm1", d.cg_dim)
    _norm(out, f"{name}.norm2", d.cg_dim)
    _param(out, f"{name}.activation.weight", 1)  # PReLU


def _cg_decoder_layer(out: Layout, name: str, d: ReleaseDims, first: bool) -> None:
    g = d.cg_dim
    for proj in ("sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj"):
        _linear(out, f"{name}.{proj}", g, g)
    _linear(out, f"{name}.self_attn.out_proj", g, g)
    _norm(out, f"{name}.norm1", g)
    for proj in ("ca_qcontent_proj", "ca_qpos_proj", "ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj",
                 "ca_qpos_sine_proj"):
        if proj != "ca_qpos_proj" or first:  # conditional DETR: the query position enters layer 0 only
            _linear(out, f"{name}.{proj}", g, g)
    _linear(out, f"{name}.cross_attn.out_proj", g, g)
    _linear(out, f"{name}.linear1", d.cg_ffn, g)
    _linear(out, f"{name}.linear2", g, d.cg_ffn)
    _norm(out, f"{name}.norm2", g)
    _norm(out, f"{name}.norm3", g)
    _param(out, f"{name}.activation.weight", 1)


def _input_proj(out: Layout, name: str, in_dim: int, dim: int, layers: int | None = 2) -> None:
    """CG-DETR LinearLayer(s): LayerNorm(in) -> Dropout -> Linear(in, out) (``net.1``); ``layers=None``: one,
    unindexed."""
    for i in range(layers or 1):
        base = name if layers is None else f"{name}.{i}"
        _norm(out, f"{base}.LayerNorm", in_dim if i == 0 else dim)
        _linear(out, f"{base}.net.1", dim, in_dim if i == 0 else dim)


def _cgdetr(out: Layout, d: ReleaseDims) -> None:
    p, g = "cg_model", d.cg_dim
    _param(out, f"{p}.global_rep_token", d.cg_prompts, g)
    _param(out, f"{p}.global_rep_pos", 1, g)
    for name in ("moment", "dummy", "sent"):
        rows = (d.cg_dummies,) if name == "dummy" else ()
        _param(out, f"{p}.{name}_rep_token", *rows, g)
        _param(out, f"{p}.{name}_rep_pos", *rows, g)
    t = f"{p}.transformer"
    _cg_encoder_layer(out, f"{t}.mcls_encoder.layers.0", d)
    for i in range(d.cg_t2v_layers):
        _cg_encoder_layer(out, f"{t}.t2v_encoder.layers.{i}", d, self_attn_in_proj=False)
    for i in range(d.cg_enc_layers):
        _cg_encoder_layer(out, f"{t}.encoder.layers.{i}", d)
    for i in range(d.cg_dec_layers):
        _cg_decoder_layer(out, f"{t}.decoder.layers.{i}", d, first=i == 0)
    _norm(out, f"{t}.decoder.norm", g)
    _mlp(out, f"{t}.decoder.query_scale", [g, g, g])
    _mlp(out, f"{t}.decoder.ref_point_head", [g, g, g])
    _mlp(out, f"{t}.decoder.bbox_embed", [g, g, g, 2])
    _mlp(out, f"{t}.decoder.ref_anchor_head", [g, g, 1])
    _param(out, f"{p}.txt_position_embed.position_embeddings.weight", d.cg_text_positions, g)
    _norm(out, f"{p}.txt_position_embed.LayerNorm", g)
    _mlp(out, f"{p}.span_embed", [g, g, g, 2])
    _linear(out, f"{p}.class_embed", 2, g)
    _param(out, f"{p}.token_type_embeddings.weight", 2, g)
    _param(out, f"{p}.query_embed.weight", d.cg_queries, 2)
    _input_proj(out, f"{p}.input_txt_proj", d.cg_txt_dim, g)
    _input_proj(out, f"{p}.input_vid_proj", d.cg_vid_dim, g)
    _linear(out, f"{p}.saliency_proj1", g, g)
    _linear(out, f"{p}.saliency_proj2", g, g)
    _input_proj(out, f"{p}.txt_proj_linear", d.cg_txt_dim, g, layers=None)
    for i in range(d.cg_dummy_layers):
        _cg_encoder_layer(out, f"{p}.txtproj_encoder.layers.{i}", d)
    _cg_encoder_layer(out, f"{p}.scls_encoder.layers.0", d)
    _param(out, "cg_criterion.empty_weight", 2)


def release_layout(dims: ReleaseDims | None = None) -> Layout:
    """Every tensor of a release with sizes ``dims``: name -> (shape, dtype name), in registration order."""
    d = dims or ReleaseDims.official()
    out: Layout = {}
    _vision(out, d)
    _qformer(out, d)
    _llm(out, d)
    _tpo_heads(out, d)
    _hiera(out, d)
    _sam_heads(out, d)
    _sam_prompt_and_decoder(out, d)
    _cgdetr(out, d)
    return out


DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "int64": 8}


def layout_bytes(layout: Layout) -> int:
    """Bytes of all tensors of ``layout`` (the index's ``metadata.total_size`` for the official one)."""
    total = 0
    for shape, dtype in layout.values():
        n = 1
        for s in shape:
            n *= s
        total += n * DTYPE_BYTES[dtype]
    return total


def official_config() -> TPOConfig:
    """The tpo-edge config of the released 7B (the ``videochat-tpo-7b`` preset)."""
    return videochat_tpo_7b_config()
