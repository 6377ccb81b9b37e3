"""export/: LLM graph vs HF Mistral, every component's ONNX-vs-PyTorch parity, manifest round trip and errors.

The tiny untrained model is exported once per session (``tiny_export``, ~1-2 min on 2 busy cores) and shared
with tests/test_verify.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.exporter import export_model, load_for_export, load_source
from export.llm_graph import LLMGraph, cache_to_list, empty_past
from export.specs import ExportError, check_onnx_io, check_precision, component_spec, example_inputs
from export.verify import VerifyReport, verify_components
from runtime.engines import open_engine
from runtime.manifest import REQUIRED_COMPONENTS, Manifest, ManifestError
from tpo_core.config import get_preset
from tpo_core.export_specs import ComponentIO, IOSpec, component_io
from tpo_core.modeling.llm import TaskLLM
from tpo_core.tokens import prompt_chunks


@functools.cache
def tiny_export() -> Path:
    """The untrained tiny model exported at fp32 (once per session; a cached temp folder)."""
    torch.set_num_threads(2)
    out = Path(tempfile.mkdtemp(prefix="tpo-export-tiny-"))
    export_model("untrained-tiny", out, "fp32", log=lambda _msg: None)
    return out


def copy_export(dst: Path) -> Path:
    shutil.copytree(tiny_export(), dst)
    return dst


# ---------------------------------------------------------------------------------------------- LLM graph
def _lora_llm() -> TaskLLM:
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    llm = TaskLLM(cfg.llm, cfg.loc_encoder_hidden).eval()
    llm.apply_lora()
    for name, p in llm.lm.named_parameters():
        if "lora_B" in name:  # non-zero deltas, so merging matters
            torch.nn.init.normal_(p, std=0.02)
    return llm.eval()  # the adapters' dropout is created in training mode


def test_llm_graph_equals_hf_mistral_prefill_then_decode():
    llm = _lora_llm()
    x = torch.randn(2, 9, 256)
    with torch.no_grad():
        ref_logits, ref_hidden, _ = llm(x)  # LoRA unmerged: the graph must match after merging
        llm.merge_lora()
        graph = LLMGraph(llm.lm).eval()
        cfg = llm.cfg
        past = empty_past(cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim, torch.float32)
        prefill = graph(x[:, :6], torch.arange(6)[None].expand(2, -1), torch.ones(2, 6, dtype=torch.long), past)
        outs = [prefill]
        for t in range(6, 9):  # decode: one token at a time over the cache
            outs.append(graph(x[:, t:t + 1], torch.full((2, 1), t), torch.ones(2, t + 1, dtype=torch.long),
                              list(outs[-1][2:])))
        _, _, cache = llm(x, past_key_values=__import__("transformers").DynamicCache(), use_cache=True)
    hidden = torch.cat([o[1] for o in outs], dim=1)
    assert torch.allclose(hidden, ref_hidden, atol=2e-5), (hidden - ref_hidden).abs().max()
    assert torch.allclose(outs[0][0], ref_logits[:, 5], atol=2e-5)
    assert torch.allclose(outs[-1][0], ref_logits[:, -1], atol=2e-5)
    for got, ref in zip(outs[-1][2:], cache_to_list(cache)):
        assert torch.allclose(got, ref, atol=2e-5)


def test_llm_graph_rope_frequencies_stay_float32_after_a_cast():
    llm = _lora_llm()
    llm.merge_lora()
    exact = LLMGraph(llm.lm).inv_freq
    graph = LLMGraph(llm.lm.to(torch.float16))  # the module's own buffer is now rounded to fp16
    assert graph.inv_freq.dtype == torch.float32 and torch.equal(graph.inv_freq, exact)


def test_llm_graph_left_padding_matches_unpadded_rows():
    torch.manual_seed(1)
    llm = _lora_llm()
    llm.merge_lora()
    graph = LLMGraph(llm.lm).eval()
    cfg = llm.cfg
    x = torch.randn(1, 5, 256)
    pad = torch.cat([torch.randn(1, 2, 256), x], dim=1)  # row padded on the left by 2
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = graph(x, torch.arange(5)[None], torch.ones(1, 5, dtype=torch.long),
                  empty_past(cfg.num_layers, 1, cfg.num_kv_heads, cfg.head_dim, torch.float32))
        b = graph(pad, torch.tensor([[0, 0, 0, 1, 2, 3, 4]]), mask,
                  empty_past(cfg.num_layers, 1, cfg.num_kv_heads, cfg.head_dim, torch.float32))
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a[1], b[1][:, 2:], atol=1e-5)
    assert torch.isfinite(b[1]).all(), "fully masked padding rows must not produce NaN"


# ---------------------------------------------------------------------------------------------- specs
def test_specs_cover_every_required_component_and_tensor_dims():
    ios = component_io(get_preset("tiny"))
    assert set(REQUIRED_COMPONENTS) <= set(ios)
    llm = ios["llm"]
    assert llm.input_names()[:3] == ["inputs_embeds", "position_ids", "attention_mask"]
    assert len(llm.inputs) == 3 + 2 * get_preset("tiny").llm.num_layers
    assert llm.profiles["prefill"]["past"][0] == 0 and llm.profiles["decode"]["seq"] == (1, 1, 1)
    assert llm.profiles["prefill"]["seq"][2] == get_preset("tiny").llm.max_context
    big = component_io(get_preset("videochat-tpo-7b"))
    assert big["vision"].outputs[0].dims == ("batch", 96, 4096)
    assert big["mask_decoder"].outputs[0].dims == ("objects", 1, 256, 256)


def test_check_precision_and_onnx_io_mismatch_are_reported():
    with pytest.raises(ValueError, match="int4"):
        check_precision("int4")
    proto = onnx.load(str(tiny_export() / "head_region.onnx"))
    spec = component_io(get_preset("tiny"))["head_region"]
    check_onnx_io(proto, spec, "fp32")
    wrong = ComponentIO("head_region", (IOSpec("task_emb", "float", ("batch", 256)),),
                        (IOSpec("box", "float", ("batch", 5)),), spec.profiles)
    with pytest.raises(ExportError, match="task_emb"):
        check_onnx_io(proto, wrong, "fp32")
    wrong = ComponentIO("head_region", spec.inputs, (IOSpec("box", "float", ("batch", 5)),), spec.profiles)
    with pytest.raises(ExportError, match="axis 1"):
        check_onnx_io(proto, wrong, "fp32")
    with pytest.raises(ExportError, match="dtype"):
        check_onnx_io(proto, spec, "fp16")


# ---------------------------------------------------------------------------------------------- parity
def test_every_component_matches_pytorch_in_onnxruntime():
    manifest = Manifest.load(tiny_export())
    model, _ = load_source("untrained-tiny")
    report = VerifyReport(str(tiny_export()), "fp32")
    verify_components(report, manifest, model)
    assert report.ok, report.summary()
    assert {k.split(".")[0] for k in report.worst} == set(manifest.components)
    assert max(report.worst.values()) < 1e-4


def test_onnx_llm_prefill_decode_handoff_equals_hf():
    manifest = Manifest.load(tiny_export())
    llm = open_engine(manifest, "llm")
    model, _ = load_source("untrained-tiny")
    x = torch.randn(1, 12, 256)
    kv = manifest.kv
    past = [np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)] * (2 * kv.layers)
    hidden = []
    for start, end in ((0, 9), (9, 10), (10, 11), (11, 12)):  # prefill 9, then 3 decode steps
        out = llm.run({"inputs_embeds": x[:, start:end].numpy(), "position_ids": np.arange(start, end)[None],
                       "attention_mask": np.ones((1, end), np.int64), **dict(zip(kv.past_names, past))})
        past = [out[n] for n in kv.present_names]
        hidden.append(out["hidden_states"])
    with torch.no_grad():
        ref_logits, ref_hidden, _ = model.llm(x)
    np.testing.assert_allclose(np.concatenate(hidden, 1), ref_hidden.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["logits"][0], ref_logits[0, -1].numpy(), atol=1e-4)
    assert past[0].shape == (1, kv.kv_heads, 12, kv.head_dim)


# ---------------------------------------------------------------------------------------------- manifest
def test_manifest_round_trip_and_contents():
    folder = tiny_export()
    m = Manifest.load(folder)
    again = Manifest.from_dict(json.loads((folder / "manifest.json").read_text()))
    assert again.to_dict() == m.to_dict()
    cfg = get_preset("tiny")
    assert (m.kv.layers, m.kv.kv_heads, m.kv.head_dim, m.kv.max_context) == (4, 2, 64, cfg.llm.max_context)
    assert m.tensors["embed_tokens"].shape == (cfg.llm.vocab_size + 7, 256)
    box = m.task_tokens["<box_begin>"]
    assert (box.role, box.head, box.placeholder) == ("begin", "region", "<boxes>")
    assert m.task_tokens["<tracking>"].embedding == "track_token"
    assert m.preprocess.num_frames == cfg.vision.num_frames and m.mask.memory_capacity == 7
    assert m.heads.temporal.round_to_s == cfg.temporal.round_to_s
    assert m.generation.eos_id == 2 and m.source.checkpoint == "untrained-tiny"
    for name, comp in m.components.items():  # the manifest's IO is the spec's, precision resolved
        assert comp == component_spec(component_io(cfg)[name], comp.file, comp.sha256, "fp32")


@pytest.mark.parametrize("question", ["What is shown?", "When does the red circle appear?", "  Track it.  "])
def test_prompt_template_renders_like_prompt_chunks(question):
    m = Manifest.load(tiny_export())
    times = [0.25, 1.0, 2.5]
    assert m.prompt.render(question, times) == prompt_chunks(question, m.prompt.system_message, times)
    assert m.prompt.render(question) == prompt_chunks(question, m.prompt.system_message)


def test_changed_or_missing_file_and_bad_schema_are_caught(tmp_path):
    folder = copy_export(tmp_path / "exp")
    path = folder / "head_region.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    (folder / "track_token.npy").unlink()
    with pytest.raises(ManifestError) as err:
        Manifest.load(folder)
    text = str(err.value)
    assert "head_region.onnx changed since export (sha256 mismatch)" in text
    assert "track_token.npy is missing" in text and "tpo export" in text
    raw = json.loads((folder / "manifest.json").read_text())
    raw["schema_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="schema_version is 99"):
        Manifest.load(folder)


def test_shapes_outside_a_profile_name_the_dim():
    m = Manifest.load(tiny_export())
    llm = m.components["llm"]
    ctx = m.kv.max_context
    shapes = {t.name: t.shape_for({"batch": 1, "seq": ctx + 1, "past": 0, "total": ctx + 1}) for t in llm.inputs}
    with pytest.raises(ValueError, match="seq"):
        llm.check_shapes("llm", shapes)
    shapes = {t.name: t.shape_for({"batch": 1, "seq": 1, "past": 10, "total": 11}) for t in llm.inputs}
    assert llm.check_shapes("llm", shapes) == "prefill"
    assert llm.check_shapes("llm", shapes, "decode") == "decode"


def test_example_inputs_respect_profiles_and_semantics():
    spec = component_io(get_preset("tiny"))["mask_memory_attention"]
    x = example_inputs(spec, "fp16", {"objects": 3})
    assert x["memory"].dtype == torch.float16 and x["memory_offsets"].dtype == torch.int64
    assert x["memory_valid"][0].any() and x["memory"].shape[0] == 3


# ---------------------------------------------------------------------------------------------- loading
def test_meta_loading_assigns_checkpoint_weights_without_copies(tmp_path):
    model, _ = load_source("untrained-tiny")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_for_export(tmp_path / "ckpt", torch.float32)
    ref = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ref[name]), name
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    half = load_for_export(tmp_path / "ckpt", torch.float16)
    assert half.llm.lm.lm_head.weight.dtype == torch.float16


def test_fp16_partial_export_runs_in_onnxruntime(tmp_path):
    model, _ = load_source("untrained-tiny")
    m = export_model("untrained-tiny", tmp_path, "fp16", components=["head_region", "llm"], model=model,
                     log=lambda _msg: None)
    assert m.components["llm"].inputs[0].dtype == "float16" and m.components["llm"].outputs[0].dtype == "float32"
    assert np.load(tmp_path / "embed_tokens.npy").dtype == np.float16
    ref, _ = load_source("untrained-tiny")
    report = VerifyReport(str(tmp_path), "fp16")
    verify_components(report, m, ref)
    assert report.ok, report.summary()


def test_fp16_export_of_the_shipped_pointer_heads_runs_in_onnxruntime(tmp_path):
    """The embedded default's pointer heads, loaded from the checkpoint (their patch-centre table is rebuilt in
    float32 after the fp16 cast) and exported in fp16: the graphs load in ONNX Runtime and match the reference."""
    m = export_model("embedded", tmp_path, "fp16", components=["head_region", "mask_prompt"],
                     log=lambda _msg: None)  # loads as `tpo export` does (materialized in fp16)
    ref, _ = load_source("embedded")
    assert ref.uses_patches
    report = VerifyReport(str(tmp_path), "fp16")
    verify_components(report, m, ref)
    assert report.ok, report.summary()


# ---------------------------------------------------------------------------------------------- build
@pytest.mark.trt
def test_tpo_build_tensorrt_rtx_on_the_tiny_export(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from export.trt_build import build_engines

    folder = copy_export(tmp_path / "exp")
    report = build_engines(folder, builder="tensorrt-rtx", verbose=False, log=lambda _msg: None)
    assert len(report.components) == len(Manifest.load(folder).components)
    m = Manifest.load(folder)
    assert all(c.engine is not None and c.engine.builder == "tensorrt-rtx" for c in m.components.values())
    assert m.components["llm"].engine.profiles == ("prefill", "decode")


def test_frame_patch_embed_equals_the_conv3d():
    """The export-only Conv2d form of the temporal-kernel-1 patch embedding gives the Conv3d's tokens, in order."""
    from export.patchers import frame_patch_embed
    from tpo_core.config import VisionConfig
    from tpo_core.modeling.vision import PatchEmbed3D

    torch.manual_seed(0)
    pe = PatchEmbed3D(VisionConfig(img_size=64, patch_size=16, num_frames=4, embed_dim=32, depth=1,
                                   num_blocks_built=1, num_heads=4)).double()
    holder = torch.nn.Module()
    holder.patch_embed = pe
    x = torch.randn(2, 3, 4, 64, 64, dtype=torch.float64)
    ref = pe(x)
    with frame_patch_embed(holder):
        got = pe(x)
    assert torch.allclose(got, ref, atol=1e-12) and got.shape == (2, 4 * 16, 32)
    assert torch.equal(pe(x), ref)  # restored


def test_vision_graph_with_object_tokens_and_names_matches_pytorch(tmp_path):
    """The vision graph of a tiny model with object tokens and class names (the patch classifier, the per-class
    features, the class names' word embeddings) exports, runs in ONNX Runtime and matches PyTorch."""
    import dataclasses

    from tpo_core.config import get_preset
    from tpo_core.model import TPOModel

    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, qformer=dataclasses.replace(cfg.qformer, object_tokens=True, object_names=True))
    model = TPOModel.from_config(cfg, seed=0).eval()
    model.save_pretrained(tmp_path / "ckpt")
    m = export_model(tmp_path / "ckpt", tmp_path / "exp", "fp32", components=["vision"], log=lambda _msg: None)
    assert m.components["vision"].outputs[0].dims == ("batch", cfg.num_visual_tokens, cfg.llm.hidden_size)
    assert cfg.num_visual_tokens == 176
    report = VerifyReport(str(tmp_path / "exp"), "fp32")
    verify_components(report, m, TPOModel.from_pretrained(tmp_path / "ckpt"))
    assert report.ok, report.summary()
    assert report.checks > 0 and any(k.startswith("vision.visual_tokens") for k in report.worst), report.summary()
