"""`tpo convert` on a small synthetic VideoChat-TPO release (official names, seeded random values).

The converted checkpoint loads strictly, every tensor equals its source after its transform, and each part's
forward equals an independent loader of the same official tensors: peft's own LoRA loading (merged and
unmerged), transformers' Blip2QFormerModel, a plain UMT forward on the raw q_bias/v_bias, and a
Sam2VideoModel loaded through transformers-style SAM2 key conversion (written in this test).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from runtime.cli import main as tpo_main
from tpo_core.checkpoint import UntrainedHeadError, untrained_heads
from tpo_core.convert.converter import convert
from tpo_core.convert.synthetic import small_config, small_dims, write_synthetic_release
from tpo_core.model import TPOModel
from tpo_core.modeling.heads.mask_track import track
from tpo_core.modeling.vision import video_pos_embed


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def release(tmp_path_factory, fixtures_dir):
    return write_synthetic_release(tmp_path_factory.mktemp("release"), fixtures_dir, small_dims(), small_config(),
                                   seed=3)


@pytest.fixture(scope="module")
def official(release) -> dict[str, torch.Tensor]:
    """The synthetic release's tensors, read back with safetensors (fp32 copies for reference maths)."""
    out = {}
    for shard in sorted(release.glob("model-*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    """(unmerged fp32, merged fp32, unmerged bf16) checkpoint folders."""
    out = {}
    for key, precision, merge in (("fp32", "fp32", False), ("merged", "fp32", True), ("bf16", "bf16", False)):
        folder = tmp_path_factory.mktemp(f"ckpt_{key}")
        convert(release, folder, precision=precision, merge_lora=merge, config=small_config(), log=lambda m: None)
        out[key] = folder
    return out


@pytest.fixture(scope="module")
def model(converted):
    return TPOModel.from_pretrained(converted["fp32"])


def test_synthetic_release_is_complete_and_randomized(release, official):
    index = json.loads((release / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(official) and len(set(index["weight_map"].values())) == 4
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in official.values())
    b = official["lm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert b.abs().min() >= 0 and b.abs().sum() > 0  # peft would start B at zero
    q, v = (official[f"vision_encoder.encoder.blocks.0.attn.{k}_bias"] for k in "qv")
    assert not torch.equal(q, v)
    assert not torch.equal(official["sam.memory_attention.norm.weight"], torch.ones_like(q[:1]).expand(32))


def test_converted_checkpoint_loads_strictly_with_report(converted, release, official):
    for folder in converted.values():
        model = TPOModel.from_pretrained(folder)  # strict: raises on missing / unexpected / mis-shaped keys
        assert model.untrained_heads == ("temporal",) and untrained_heads(folder) == ["temporal"]
    report = json.loads((converted["fp32"] / "convert_report.json").read_text())
    assert report["unmapped"] == [] and report["total"] == len(official)
    assert report["mapped"] + len(report["extras"]) == report["total"]
    assert all(n.startswith("temporal_head.") for n in report["untrained_tensors"])
    with safe_open(str(converted["bf16"] / "extras.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(report["extras"])
        for name in f.keys():  # noqa: SIM118
            assert torch.equal(f.get_tensor(name), official[name]), name  # verbatim, bf16 bits
    tok = json.loads((converted["fp32"] / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert [ids[t] for t in ("<box_begin>", "<time_begin>", "<temp>", "<boxes>", "<track_begin>", "<tracking>",
                             "<track_box>")] == list(range(32000, 32007))


def _expected(transform: str, sources: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    if transform == "copy":
        return sources[""]
    if transform == "fuse_qkv_bias":
        return torch.cat([sources["q"], torch.zeros_like(sources["q"]), sources["v"]])
    if transform == "cat_rows":
        return torch.cat([sources[str(i)] for i in range(4)])
    return sources["base"].float() + (sources["B"].float() @ sources["A"].float()) * scale


@pytest.mark.parametrize("key", ["bf16", "fp32", "merged"])
def test_every_tensor_is_bit_exact_after_its_transform(converted, official, key):
    state = load_file(str(converted[key] / "model.safetensors"))
    report = json.loads((converted[key] / "convert_report.json").read_text())
    lora = small_config().llm.lora
    for name, target in report["targets"].items():
        srcs = {role: official[src] for role, src in target["sources"].items()}
        want = _expected(target["transform"], srcs, lora.alpha / lora.r).to(state[name].dtype)
        assert torch.equal(state[name], want), name
    # a few renames spelled out by hand, independent of the table
    d = small_config().vision.embed_dim
    qkv_b = state["vision.blocks.1.attn.qkv.bias"]
    assert torch.equal(qkv_b[:d], official["vision_encoder.encoder.blocks.1.attn.q_bias"].to(qkv_b.dtype))
    assert torch.equal(qkv_b[2 * d:], official["vision_encoder.encoder.blocks.1.attn.v_bias"].to(qkv_b.dtype))
    assert not qkv_b[d:2 * d].any()
    pe = state["mask_head.sam.prompt_encoder.point_embed.weight"]
    assert torch.equal(pe[2], official["sam.sam_prompt_encoder.point_embeddings.2.weight"][0].to(pe.dtype))
    assert torch.equal(state["region_head.mlp.2.weight"], official["loc_decoder.2.weight"].to(pe.dtype))


def test_untrained_temporal_routing_is_refused_with_the_fix(converted, sample_videos):
    from tpo_core.data.video import read_video

    model = TPOModel.from_pretrained(converted["fp32"])
    clip = read_video(sample_videos[0], model.config.vision.num_frames)
    ids = model.task_ids

    def force(token):
        def proc(step, scores):
            out = torch.full_like(scores, -1e9)
            out[token if step == 0 else model.prompts.eos_id] = 0.0
            return out
        return proc

    res = model.generate(clip, "Where is it?", logits_processor=force(ids.box_begin), max_new_tokens=4)
    assert res.tasks == ["region"] and res.region is not None  # other heads run
    with pytest.raises(UntrainedHeadError, match=r"temporal head, but that head is untrained.*Train the temporal"):
        model.generate(clip, "When does it appear?", logits_processor=force(ids.time_begin), max_new_tokens=4)


# ---------------------------------------------------------------------------- independent loaders, fp32
def test_llm_equals_peft_loading_unmerged_and_merged(converted, official):
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    from tpo_core.modeling.llm import mistral_config

    cfg = small_config().llm
    torch.manual_seed(0)
    peft_model = get_peft_model(MistralForCausalLM(mistral_config(cfg)),
                                LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                           target_modules=list(cfg.lora.target_modules)))
    lm_state = {k.removeprefix("lm."): v.float() for k, v in official.items() if k.startswith("lm.")}
    peft_model.load_state_dict(lm_state, strict=True)  # peft's own layout: the release's names minus "lm."
    peft_model.eval()
    ids = torch.randint(0, cfg.vocab_size + 7, (1, 12), generator=torch.Generator().manual_seed(1))
    ours = TPOModel.from_pretrained(converted["fp32"]).llm.lm
    with torch.no_grad():
        ref = peft_model(input_ids=ids).logits
        torch.testing.assert_close(ours(input_ids=ids).logits, ref, rtol=0, atol=0)
        merged_ref = peft_model.merge_and_unload()
        merged = TPOModel.from_pretrained(converted["merged"]).llm.lm
        for name, w in merged_ref.state_dict().items():
            torch.testing.assert_close(merged.state_dict()[name], w, rtol=1e-6, atol=1e-6, msg=name)
        torch.testing.assert_close(merged(input_ids=ids).logits, merged_ref(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_qformer_connector_equals_blip2_qformer_loading(model, official):
    from transformers import Blip2QFormerModel

    from tpo_core.modeling.connector import qformer_hf_config

    cfg = small_config()
    ref = Blip2QFormerModel(qformer_hf_config(cfg.qformer, cfg.vision.embed_dim)).eval()
    state = {}
    for name, t in official.items():  # BLIP-2's own key conversion: Qformer.bert -> qformer, self -> attention
        if not name.startswith("qformer.bert.") or re.search(r"word_emb|position_|layer\.\d+\.(intermediate|output)\.",
                                                             name):
            continue
        key = name.removeprefix("qformer.bert.").replace("embeddings.LayerNorm", "layernorm")
        state[key.replace(".self.", ".attention.")] = t.float()
    ref.load_state_dict(state, strict=True)
    tokens = torch.randn(2, 8, cfg.vision.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x = F.layer_norm(tokens, (cfg.vision.embed_dim,), official["vision_layernorm.weight"].float(),
                         official["vision_layernorm.bias"].float(), eps=1e-12)
        queries = torch.cat([official["query_tokens"], official["extra_query_tokens"]], dim=1).float().expand(2, -1, -1)
        out = ref(query_embeds=queries, encoder_hidden_states=x).last_hidden_state
        want = F.linear(out, official["project_up.weight"].float(), official["project_up.bias"].float())
        torch.testing.assert_close(model.connector(tokens), want, rtol=1e-5, atol=1e-5)


def test_vision_encoder_equals_a_plain_umt_forward_on_raw_biases(model, official):
    cfg = small_config().vision
    frames = torch.randn(1, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(4))
    p = "vision_encoder.encoder"
    w = {k: v.float() for k, v in official.items() if k.startswith(p)}
    x = F.conv3d(frames.permute(0, 2, 1, 3, 4), w[f"{p}.patch_embed.proj.weight"], w[f"{p}.patch_embed.proj.bias"],
                 stride=(cfg.tubelet_size, cfg.patch_size, cfg.patch_size)).flatten(2).transpose(1, 2)
    x = x + video_pos_embed(cfg.pos_emb_frames, cfg.tokens_per_frame, cfg.embed_dim, cfg.num_frames)
    d, h = cfg.embed_dim, cfg.num_heads
    for i in range(cfg.num_blocks_built):
        b = f"{p}.blocks.{i}"
        y = F.layer_norm(x, (d,), w[f"{b}.norm1.weight"], w[f"{b}.norm1.bias"], eps=cfg.layer_norm_eps)
        bias = torch.cat([w[f"{b}.attn.q_bias"], torch.zeros(d), w[f"{b}.attn.v_bias"]])  # the release's forward
        q, k, v = F.linear(y, w[f"{b}.attn.qkv.weight"], bias).reshape(1, -1, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(1, -1, d), w[f"{b}.attn.proj.weight"], w[f"{b}.attn.proj.bias"])
        y = F.layer_norm(x, (d,), w[f"{b}.norm2.weight"], w[f"{b}.norm2.bias"], eps=cfg.layer_norm_eps)
        y = F.linear(F.gelu(F.linear(y, w[f"{b}.mlp.fc1.weight"], w[f"{b}.mlp.fc1.bias"])), w[f"{b}.mlp.fc2.weight"],
                     w[f"{b}.mlp.fc2.bias"])
        x = x + y
    with torch.no_grad():
        torch.testing.assert_close(model.vision(frames), x, rtol=1e-4, atol=1e-4)


def test_task_heads_equal_the_release_mlps(model, official):
    h = torch.randn(3, small_config().llm.hidden_size, generator=torch.Generator().manual_seed(5))
    o = {k: v.float() for k, v in official.items()}

    def mlp(prefix, x, layers):
        for i, name in enumerate(layers):
            x = F.linear(x, o[f"{prefix}.{name}.weight"], o[f"{prefix}.{name}.bias"])
            x = F.relu(x) if i < len(layers) - 1 else x
        return x

    with torch.no_grad():
        torch.testing.assert_close(model.run_region(h), mlp("loc_decoder", h, ["0", "2"]))
        torch.testing.assert_close(model.mask_head.sparse_prompt(h).flatten(1),
                                   mlp("track_embed", h, ["layers.0", "layers.1"]))
        torch.testing.assert_close(model.mask_head.box(h), mlp("track_embed_decode2", h, ["layers.0", "layers.1"]))
        box = torch.rand(2, 4, generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(model.llm.loc_encoder(box), mlp("loc_encoder", box, ["0", "2"]))
        assert torch.equal(model.llm.track_token, o["track_token"])


# transformers' SAM2 key conversion (convert_sam2_video_to_hf.py), written out here: ordered substring
# replacements, then the numbered-layer fix-ups. The wheel does not ship the script, so it cannot be imported.
_HF_SAM2_SUBSTRINGS = [
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"), ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"), ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"), ("dwconv", "depthwise_conv"), ("pwconv", "pointwise_conv"),
    ("fuser", "memory_fuser"), ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("sam_prompt_encoder", "prompt_encoder"), ("sam_mask_decoder", "mask_decoder"),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"), ("gamma", "scale"),
    ("image_encoder.neck", "vision_encoder.neck"), ("image_encoder", "vision_encoder.backbone"),
    ("neck.0", "neck.conv1"), ("neck.1", "neck.layer_norm1"), ("neck.2", "neck.conv2"), ("neck.3", "neck.layer_norm2"),
    ("pix_feat_proj", "feature_projection"), ("patch_embed.proj", "patch_embed.projection"),
    ("no_mem_embed", "no_memory_embedding"), ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("obj_ptr", "object_pointer"), (".norm", ".layer_norm"), ("trunk.", ""), ("out_proj", "o_proj"),
]


def _hf_sam2_key(key: str) -> str:
    for old, new in _HF_SAM2_SUBSTRINGS:
        key = key.replace(old, new)
    if m := re.match(r"vision_encoder\.backbone\.blocks\.\d+\.mlp\.layers\.(\d+)", key):
        key = key.replace(f"layers.{m.group(1)}", "proj_in" if m.group(1) == "0" else "proj_out")
    if m := re.match(r"mask_decoder\.transformer\.layers\.\d+\.mlp\.layers\.(\d+)", key):
        key = key.replace(f"mlp.layers.{m.group(1)}", "mlp.proj_in" if m.group(1) == "0" else "mlp.proj_out")
    for pattern in (r"mask_decoder\.pred_obj_score_head\.layers\.(\d+)",
                    r".*output_hypernetworks_mlps\.\d+\.layers\.(\d+)", r"object_pointer_proj\.layers\.(\d+)"):
        if m := re.match(pattern, key):
            new = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}[m.group(1)]
            key = re.sub(rf"layers\.{m.group(1)}(?=\.)", new, key, count=1) if "hypernetworks" not in key else \
                re.sub(rf"(output_hypernetworks_mlps\.\d+\.)layers\.{m.group(1)}", rf"\g<1>{new}", key)
    if re.match(r"vision_encoder\.neck\.convs\.\d+\.conv", key):
        key = key.replace(".conv.", ".")
    if key.startswith("memory_encoder.o_proj"):
        key = key.replace(".o_proj.", ".projection.")
    if m := re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)", key):
        n = int(m.group(1))
        new = "final_conv" if n == 12 else f"layers.{n // 3}." + ("conv" if n % 3 == 0 else "layer_norm")
        key = key.replace(f"encoder.{n}", new)
    return key


def _hf_sam2_state(official) -> dict[str, torch.Tensor]:
    state = {_hf_sam2_key(k.removeprefix("sam.")): v.float() for k, v in official.items() if k.startswith("sam.")}
    state["shared_image_embedding.positional_embedding"] = state["prompt_encoder.shared_embedding.positional_embedding"]
    state["prompt_encoder.point_embed.weight"] = torch.cat([state.pop(f"prompt_encoder.point_embed.{i}.weight")
                                                            for i in range(4)])
    return state


def test_sam2_equals_transformers_conversion_path_frame0_and_propagation(model, official):
    from transformers import Sam2VideoModel

    from tpo_core.modeling.heads.mask import MaskHead

    cfg = small_config()
    ref = MaskHead(cfg.mask, cfg.llm.hidden_size)  # a fresh head: SAM2 via transformers' key conversion
    assert isinstance(ref.sam, Sam2VideoModel)
    ref.sam.load_state_dict(_hf_sam2_state(official), strict=True)
    ref.prompt_mlp.layers[0].weight.data = official["track_embed.layers.0.weight"].float()
    ref.prompt_mlp.layers[0].bias.data = official["track_embed.layers.0.bias"].float()
    ref.prompt_mlp.layers[1].weight.data = official["track_embed.layers.1.weight"].float()
    ref.prompt_mlp.layers[1].bias.data = official["track_embed.layers.1.bias"].float()
    ref.eval()
    ours_state = {k.removeprefix("mask_head.sam."): v for k, v in model.state_dict().items()
                  if k.startswith("mask_head.sam.")}
    for k, v in ref.sam.state_dict().items():
        assert torch.equal(ours_state[k], v), k
    s = cfg.mask.image_size
    pixels = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(7))  # frame 0 + 3 propagated
    h = torch.randn(1, cfg.llm.hidden_size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        got = model.run_mask(h, pixels)
        want = track(ref, pixels, ref.sparse_prompt(h))
    torch.testing.assert_close(got.low_res_logits, want.low_res_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.object_score_logits, want.object_score_logits, rtol=1e-5, atol=1e-5)
    assert got.low_res_logits.shape == (4, 1, s // 4, s // 4) and torch.isfinite(got.raw_low_res_logits).all()


def test_cli_convert_with_config_and_bad_input(release, tmp_path, capsys):
    cfg_path = tmp_path / "small.json"
    small_config().to_json(cfg_path)
    out = tmp_path / "ckpt"
    rc = tpo_main(["convert", "--from", "videochat-tpo", str(release), "--out", str(out), "--config", str(cfg_path),
                   "--merge-lora", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["unmapped"] == [] and summary["untrained_heads"] == ["temporal"]
    assert not TPOModel.from_pretrained(out).llm.lora_applied
    rc = tpo_main(["convert", "--from", "videochat-tpo", str(tmp_path), "--out", str(tmp_path / "x")])
    assert rc == 2 and "model.safetensors.index.json" in capsys.readouterr().err
    rc = tpo_main(["convert", "--from", "videochat-tpo", str(release), "--out", str(tmp_path / "y")])
    assert rc == 2 and "--config" in capsys.readouterr().err  # the small release does not fit the 7B preset
