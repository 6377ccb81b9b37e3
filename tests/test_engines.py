"""Engine wrappers on REAL tiny ONNX graphs exported from torch (CPU; GPU tests marked ``gpu``).

The helpers at the top (toy modules, :func:`make_manifest`, :func:`toy_export`) are also used by
tests/test_trt_build.py.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from runtime.engines import open_engine
from runtime.engines.ort import OrtEngine
from runtime.manifest import (
    REQUIRED_COMPONENTS,
    SCHEMA,
    SCHEMA_VERSION,
    ComponentSpec,
    Manifest,
    ManifestError,
    SourceInfo,
    TensorFile,
    TensorSpec,
    sha256_file,
)

D = 16  # toy attention width


# ------------------------------------------------------------------------------------------ toy graphs
class ToyMLP(nn.Module):
    """x [batch, 8] -> y [batch, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyAttention(nn.Module):
    """LayerNorm + single-head attention over a KV-like cache.

    x [batch, seq, D], past_k/past_v [batch, past, D] -> out [batch, seq, D], k/v [batch, total=past+seq, D].
    """

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(D), nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D), dim=-1)
        return x + self.proj(att @ v), k, v


class ToyEmbed(nn.Module):
    """ids int64 [batch, seq] -> emb [batch, seq, 8] (a Gather from an embedding table)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * 2.0


def _t(name: str, dtype: str, dims: list) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, dims=tuple(dims), doc="")


def toy_graphs() -> dict[str, dict]:
    """name -> {module, example inputs, inputs, outputs, profiles, dynamic axes}."""
    torch.manual_seed(0)
    mlp = {"module": ToyMLP().eval(), "example": (torch.randn(2, 8),),
           "inputs": [_t("x", "float32", ["batch", 8])], "outputs": [_t("y", "float32", ["batch", 4])],
           "profiles": {"default": {"batch": [1, 4, 16]}}}
    attn = {"module": ToyAttention().eval(),
            "example": (torch.randn(1, 4, D), torch.randn(1, 3, D), torch.randn(1, 3, D)),
            "inputs": [_t("x", "float32", ["batch", "seq", D]), _t("past_k", "float32", ["batch", "past", D]),
                       _t("past_v", "float32", ["batch", "past", D])],
            "outputs": [_t("out", "float32", ["batch", "seq", D]), _t("k", "float32", ["batch", "total", D]),
                        _t("v", "float32", ["batch", "total", D])],
            "profiles": {"prefill": {"batch": [1, 1, 2], "seq": [1, 8, 32], "past": [1, 1, 1]},
                         "decode": {"batch": [1, 1, 2], "seq": [1, 1, 1], "past": [1, 16, 64]}}}
    embed = {"module": ToyEmbed().eval(), "example": (torch.randint(0, 50, (2, 5)),),
             "inputs": [_t("ids", "int64", ["batch", "seq"])], "outputs": [_t("emb", "float32", ["batch", "seq", 8])],
             "profiles": {"default": {"batch": [1, 1, 4], "seq": [1, 16, 64]}}}
    return {"mlp": mlp, "attn": attn, "embed": embed}


def export_onnx(graph: dict, path: Path, opset: int = 17) -> Path:
    """torch.onnx.export with every symbolic dim of the graph's IO marked dynamic."""
    io = graph["inputs"] + graph["outputs"]
    axes = {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in io}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph["module"], graph["example"], str(path), input_names=[t.name for t in graph["inputs"]],
                          output_names=[t.name for t in graph["outputs"]], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
    return path


def component(folder: Path, file: str, graph: dict, precision: str = "fp32") -> ComponentSpec:
    return ComponentSpec(file=file, sha256=sha256_file(folder / file), inputs=tuple(graph["inputs"]),
                         outputs=tuple(graph["outputs"]),
                         profiles={p: {d: tuple(r) for d, r in rs.items()} for p, rs in graph["profiles"].items()},
                         precision=precision, external_data=None, external_data_sha256=None, tolerance={},
                         engine=None, doc="toy")


def make_manifest(folder: Path, components: dict[str, ComponentSpec], precision: str = "fp32") -> Manifest:
    """A valid manifest for arbitrary components (add the REQUIRED_COMPONENTS yourself), saved in ``folder``: the
    non-graph sections are the tiny preset's, with the tiny tokenizer and zero task embeddings as files."""
    from tpo_core.config import get_preset
    from tpo_core.data.tokenizer_build import ASSET_DIR, load_tokenizer
    from tpo_core.export_specs import manifest_sections, tokenizer_section
    from tpo_core.tokens import TaskTokenIds

    cfg = get_preset("tiny")
    shutil.copy(ASSET_DIR / "tokenizer.json", folder / "tokenizer.json")
    tensors = {}
    for name in ("box_token", "temporal_token", "track_token"):
        np.save(folder / f"{name}.npy", np.zeros(4, np.float32))
        tensors[name] = TensorFile(f"{name}.npy", sha256_file(folder / f"{name}.npy"), "float32", (4,), "float32", "")
    tok = tokenizer_section(load_tokenizer(cfg.llm.tokenizer), "tokenizer.json", sha256_file(folder / "tokenizer.json"))
    sections = manifest_sections(cfg, tok, TaskTokenIds.after_vocab(cfg.llm.vocab_size).by_token(), "float32")
    m = Manifest(schema=SCHEMA, schema_version=SCHEMA_VERSION, toolkit_version="test",
                 source=SourceInfo("toy", None, "toy", {}, None, "toy"), precision=precision, opset=17,
                 components=components, tensors=tensors, **sections)
    m.save(folder)
    return Manifest.load(folder)


# Which toy graph stands in for each required component.
TOY_FOR = {"vision": "mlp", "llm": "attn", "head_region": "mlp", "head_temporal": "mlp", "mask_image_encoder": "embed",
           "mask_decoder": "mlp", "mask_memory_attention": "attn", "mask_memory_encoder": "embed"}


def toy_export(folder: Path, extra: dict[str, ComponentSpec] | None = None) -> Manifest:
    """Export the three toy graphs into ``folder`` and a manifest naming every required component."""
    folder.mkdir(parents=True, exist_ok=True)
    graphs = toy_graphs()
    for name, g in graphs.items():
        export_onnx(g, folder / f"{name}.onnx")
    comps = {c: component(folder, f"{toy}.onnx", graphs[toy]) for c, toy in TOY_FOR.items()}
    assert set(comps) == set(REQUIRED_COMPONENTS)
    return make_manifest(folder, {**comps, **(extra or {})})


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Manifest:
    return toy_export(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def graphs() -> dict[str, dict]:
    return toy_graphs()


def _torch(graph: dict, *arrays: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = graph["module"](*(torch.from_numpy(a) for a in arrays))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def test_ort_cpu_matches_torch(export: Manifest, graphs: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8), dtype=np.float32)
    with open_engine(export, "vision", threads=1) as eng:
        np.testing.assert_allclose(eng.run({"x": x})["y"], _torch(graphs["mlp"], x)[0], atol=1e-5)
    ids = rng.integers(0, 50, (2, 7)).astype(np.int64)
    with open_engine(export, "mask_image_encoder") as eng:
        np.testing.assert_allclose(eng.run({"ids": ids})["emb"], _torch(graphs["embed"], ids)[0], atol=1e-6)


def test_ort_llm_profiles_prefill_then_decode(export: Manifest, graphs: dict) -> None:
    rng = np.random.default_rng(1)
    eng = open_engine(export, "llm", optimization="extended", spinning=False)
    x, pk, pv = (rng.standard_normal(s, dtype=np.float32) for s in ((1, 8, D), (1, 1, D), (1, 1, D)))
    out = eng.run({"x": x, "past_k": pk, "past_v": pv})
    assert eng.last_profile == "prefill" and out["k"].shape == (1, 9, D)
    for got, want in zip((out["out"], out["k"], out["v"]), _torch(graphs["attn"], x, pk, pv)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    step = rng.standard_normal((1, 1, D), dtype=np.float32)
    out2 = eng.run({"x": step, "past_k": out["k"], "past_v": out["v"]})
    assert eng.last_profile == "decode" and out2["v"].shape == (1, 10, D)
    np.testing.assert_allclose(out2["out"], _torch(graphs["attn"], step, out["k"], out["v"])[0], atol=1e-5)


@pytest.mark.parametrize("feeds, match", [
    ({"x": np.zeros((2, 8), np.float32), "z": np.zeros(1)}, r"vision: unknown input\(s\) \['z'\].*inputs are \['x'\]"),
    ({}, r"vision: missing input 'x' \(float32 \[batch, 8\]\)"),
    ({"x": np.zeros((2, 8))}, r"vision: input 'x' has dtype float64, expected float32. Cast it"),
    ({"x": np.zeros((2, 8, 1), np.float32)}, r"vision: input 'x' has shape \(2, 8, 1\) \(rank 3\), expected rank 2"),
    ({"x": np.zeros((2, 9), np.float32)}, r"input 'x' has shape \(2, 9\), but dim 1 must be 8 \(static"),
    ({"x": np.zeros((40, 8), np.float32)}, r"vision: input shapes \{'x': \(40, 8\)\} fit no engine profile .*"
                                           r"batch=40 outside \[1, 16\].*Re-export with a larger profile"),
    ({"x": torch.zeros(2, 8, dtype=torch.float16)}, r"dtype float16, expected float32"),
])
def test_input_validation_messages(export: Manifest, feeds: dict, match: str) -> None:
    with open_engine(export, "vision") as eng, pytest.raises(ValueError, match=match):
        eng.run(feeds)


def test_inconsistent_symbolic_dim_and_profile_errors(export: Manifest) -> None:
    eng = open_engine(export, "llm")
    feeds = {"x": np.zeros((2, 4, D), np.float32), "past_k": np.zeros((1, 1, D), np.float32),
             "past_v": np.zeros((1, 1, D), np.float32)}
    with pytest.raises(ValueError, match=r"llm: .*dim batch is 2 in one input and 1 in past_k"):
        eng.run(feeds)
    feeds["x"] = np.zeros((1, 4, D), np.float32)
    with pytest.raises(ValueError, match=r"profile 'decode': x dim seq=4 outside \[1, 1\]"):
        eng.run(feeds, profile="decode")
    with pytest.raises(ValueError, match=r"unknown profile 'beam'; the profiles are \['prefill', 'decode'\]"):
        eng.run(feeds, profile="beam")
    assert eng.run(feeds, profile="prefill")["k"].shape == (1, 5, D)


def test_preallocated_outputs_are_written(export: Manifest, graphs: dict) -> None:
    x = np.random.default_rng(2).standard_normal((5, 8), dtype=np.float32)
    buf = np.full((5, 4), np.nan, np.float32)
    eng = open_engine(export, "head_region")
    out = eng.run({"x": x}, outputs={"y": buf})
    assert out["y"] is buf
    np.testing.assert_allclose(buf, _torch(graphs["mlp"], x)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"output buffer 'y' has shape \(4, 4\), these inputs produce \(5, 4\)"):
        eng.run({"x": x}, outputs={"y": np.empty((4, 4), np.float32)})
    with pytest.raises(ValueError, match=r"output buffer 'y' has dtype float64, expected float32"):
        eng.run({"x": x}, outputs={"y": np.empty((5, 4))})
    with pytest.raises(ValueError, match=r"unknown output buffer\(s\) \['nope'\]"):
        eng.run({"x": x}, outputs={"nope": buf})
    # 'k' has the unbound dim 'total': only 'out' can be preallocated; ORT allocates the others
    attn = open_engine(export, "mask_memory_attention")
    out_buf = np.empty((1, 3, D), np.float32)
    res = attn.run({"x": np.ones((1, 3, D), np.float32), "past_k": np.ones((1, 1, D), np.float32),
                    "past_v": np.ones((1, 1, D), np.float32)}, outputs={"out": out_buf})
    assert res["out"] is out_buf and res["k"].shape == (1, 4, D) and np.isfinite(out_buf).all()


def test_changed_onnx_is_caught_by_hash_check(tmp_path: Path) -> None:
    m = toy_export(tmp_path / "exp")
    with open(m.path_of("mlp.onnx"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"component vision: file mlp.onnx changed since export"):
        Manifest.load(m.root)
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        open_engine(m.root, "vision")


def test_graph_and_manifest_disagree(tmp_path: Path) -> None:
    m = toy_export(tmp_path / "exp")
    spec = m.components["vision"]
    spec = dataclasses.replace(spec, inputs=(dataclasses.replace(spec.inputs[0], name="pixels"),))
    with pytest.raises(ValueError, match=r"vision: graph mlp.onnx has inputs \['x'\].*manifest says \['pixels'\]"):
        OrtEngine("vision", spec, m.root)


def test_backend_failure_raises_runtime_error(tmp_path: Path) -> None:
    """A manifest looser than the graph: validation passes, ONNX Runtime fails -> RuntimeError, not a flag."""
    m = toy_export(tmp_path / "exp")
    spec = m.components["vision"]
    spec = dataclasses.replace(spec, inputs=(dataclasses.replace(spec.inputs[0], dims=("batch", "feat")),),
                               profiles={"default": {"batch": (1, 4, 16), "feat": (1, 8, 16)}})
    eng = OrtEngine("vision", spec, m.root)
    with pytest.raises(RuntimeError, match=r"vision: ONNX Runtime failed on inputs \{'x': \(2, 9\)\}"):
        eng.run({"x": np.zeros((2, 9), np.float32)})


def test_factory_and_lifecycle_errors(export: Manifest) -> None:
    with pytest.raises(ValueError, match=r"no component 'nope'.*components: \['head_region'"):
        open_engine(export, "nope")
    with pytest.raises(ValueError, match=r"backend 'onnx' not in \['ort', 'tensorrt'\]"):
        open_engine(export, "vision", backend="onnx")
    with pytest.raises(ValueError, match=r"device 'gpu' is not one of"):
        open_engine(export, "vision", device="gpu")
    with pytest.raises(ValueError, match=r"records no engine; build one with `tpo build"):
        open_engine(export, "vision", backend="tensorrt", device="cuda")
    eng = open_engine(export, "vision")
    eng.close()
    with pytest.raises(RuntimeError, match="engine is closed"):
        eng.run({"x": np.zeros((1, 8), np.float32)})


def test_runtime_does_not_import_training_code() -> None:
    import subprocess
    import sys

    code = ("import sys, runtime.engines, runtime.engines.ort, runtime.trt_compat;"
            "bad = [m for m in ('tpo_core', 'transformers', 'peft', 'export', 'torch', 'tensorrt', 'tensorrt_rtx')"
            " if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_cuda_provider_options_turn_tf32_off_for_fp32_graphs() -> None:
    from runtime.engines.ort import cuda_provider_options

    assert cuda_provider_options(1, "fp32") == {"device_id": 1, "use_tf32": "0"}
    assert "use_tf32" not in cuda_provider_options(0, "fp16")
    assert cuda_provider_options(0, "fp32", {"use_tf32": "1"})["use_tf32"] == "1"  # the caller's choice wins
    opts = cuda_provider_options(0, "fp32", None, 1234)
    assert opts["has_user_compute_stream"] == "1" and opts["user_compute_stream"] == "1234"


# ------------------------------------------------------------------------------------------- GPU tier
@pytest.mark.gpu
def test_ort_cuda_fp32_graphs_run_without_tf32(export: Manifest) -> None:
    """ORT reports the option it applied (fp32 toy export): TF32 off by default, on when asked."""
    eng = open_engine(export, "llm", device="cuda")
    assert eng.spec.precision == "fp32"
    assert eng.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    eng = open_engine(export, "llm", device="cuda", provider_options={"use_tf32": "1"})
    assert eng.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "1"


@pytest.mark.gpu
def test_ort_cuda_iobinding_matches_cpu(export: Manifest) -> None:
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((1, 6, D), dtype=np.float32),
             "past_k": rng.standard_normal((1, 1, D), dtype=np.float32),
             "past_v": rng.standard_normal((1, 1, D), dtype=np.float32)}
    cpu = open_engine(export, "llm").run(feeds)
    gpu = open_engine(export, "llm", device="cuda")
    dev_feeds = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    out_buf = torch.empty((1, 6, D), device="cuda")
    res = gpu.run(dev_feeds, outputs={"out": out_buf}, stream=torch.cuda.current_stream())
    assert res["out"] is out_buf and res["k"].is_cuda
    for name in cpu:
        np.testing.assert_allclose(res[name].cpu().numpy(), cpu[name], atol=1e-4)
    ids = rng.integers(0, 50, (2, 7)).astype(np.int64)
    np.testing.assert_allclose(open_engine(export, "mask_image_encoder", device="cuda").run({"ids": ids})["emb"]
                               .cpu().numpy(), open_engine(export, "mask_image_encoder").run({"ids": ids})["emb"],
                               atol=1e-5)


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_engine_matches_ort(tmp_path: Path) -> None:
    """Needs full ``tensorrt`` on a GPU (TensorRT-RTX engines cannot run on H100/H200 or Jetson)."""
    from export.trt_build import build_engines

    m = toy_export(tmp_path / "exp")
    build_engines(m.root, builder="tensorrt", components=["vision", "llm", "mask_image_encoder"], verbose=False)
    m = Manifest.load(m.root)
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((1, 8, D), dtype=np.float32),
             "past_k": rng.standard_normal((1, 1, D), dtype=np.float32),
             "past_v": rng.standard_normal((1, 1, D), dtype=np.float32)}
    ref = open_engine(m, "llm").run(feeds)
    eng = open_engine(m, "llm", backend="tensorrt", device="cuda")
    got = eng.run(feeds)
    assert eng.last_profile == "prefill"
    for name in ref:
        np.testing.assert_allclose(got[name].cpu().numpy(), ref[name], atol=1e-3)
    step = {"x": rng.standard_normal((1, 1, D), dtype=np.float32), "past_k": ref["k"], "past_v": ref["v"]}
    np.testing.assert_allclose(eng.run(step)["out"].cpu().numpy(), open_engine(m, "llm").run(step)["out"], atol=1e-3)
    assert eng.last_profile == "decode"
    ids = rng.integers(0, 50, (2, 7)).astype(np.int64)
    trt_emb = open_engine(m, "mask_image_encoder", backend="tensorrt", device="cuda").run({"ids": ids})["emb"]
    np.testing.assert_allclose(trt_emb.cpu().numpy(), open_engine(m, "mask_image_encoder").run({"ids": ids})["emb"],
                               atol=1e-5)
