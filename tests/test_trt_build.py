"""``tpo build`` with the real TensorRT-RTX builder on CPU (marked ``trt``): REAL toy graphs, real engines.

TensorRT-RTX builds ahead-of-time engines without a GPU; they cannot be executed here (nor on H100/H200):
execution is covered by the ``gpu`` test in tests/test_engines.py with full TensorRT.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import onnx
import onnx.helper as oh
import pytest
import torch

from export.trt_build import EngineBuildError, Target, build_engines, main, resolve_precision
from runtime.manifest import REQUIRED_COMPONENTS, ComponentSpec, Manifest, ManifestError, TensorSpec, sha256_file
from runtime.trt_compat import load_trt

_spec = importlib.util.spec_from_file_location("_toys", Path(__file__).with_name("test_engines.py"))
toys = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toys)

pytestmark = pytest.mark.trt
RTX = "tensorrt-rtx"


def _fp16_mlp(folder: Path) -> ComponentSpec:
    """An MLP exported in fp16 (IO and weights float16): what the RTX builder builds as fp16."""
    g = toys.toy_graphs()["mlp"]
    g["module"], g["example"] = g["module"].half(), (torch.randn(2, 8).half(),)
    for key in ("inputs", "outputs"):
        g[key] = [dataclasses.replace(t, dtype="float16") for t in g[key]]
    toys.export_onnx(g, folder / "mlp_fp16.onnx")
    return toys.component(folder, "mlp_fp16.onnx", g, precision="fp16")


def _bad_graph(folder: Path) -> ComponentSpec:
    """A graph with an operator no TensorRT knows, in a node named ``my_fancy_node``."""
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu0"),
             oh.make_node("FancyOp", ["r"], ["y"], name="my_fancy_node", domain="com.example")]
    graph = oh.make_graph(nodes, "bad", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)]),
              folder / "bad.onnx")
    return ComponentSpec(file="bad.onnx", sha256=sha256_file(folder / "bad.onnx"),
                         inputs=(TensorSpec("x", "float32", ("batch", 4), ""),),
                         outputs=(TensorSpec("y", "float32", ("batch", 4), ""),),
                         profiles={"default": {"batch": (1, 2, 4)}}, precision="fp32", external_data=None,
                         external_data_sha256=None, tolerance={}, engine=None, doc="")


@pytest.fixture
def export(tmp_path: Path) -> Manifest:
    folder = tmp_path / "exp"
    folder.mkdir()
    return toys.toy_export(folder, extra={"head_fp16": _fp16_mlp(folder)})


def test_rtx_builds_every_toy_graph_and_records_engines(export: Manifest, capsys) -> None:
    trt = load_trt(RTX)
    report = build_engines(export.root, builder=RTX, workspace_gib=0.5)
    names = set(REQUIRED_COMPONENTS) | {"head_fp16"}
    assert {c.component for c in report.components} == names
    assert report.builder == RTX and report.builder_version == trt.version and report.compute_target == "rtx-jit"
    m = Manifest.load(export.root)  # hashes of ONNX files and engines verified
    for name in names:
        rec = m.components[name].engine
        assert rec is not None and rec.file == f"{name}.engine" and rec.sha256 == sha256_file(m.path_of(rec.file))
        assert (rec.builder, rec.builder_version, rec.compute_target) == (RTX, trt.version, "rtx-jit")
        assert rec.precision == m.components[name].precision and rec.profiles == tuple(m.components[name].profiles)
    assert m.components["llm"].engine.profiles == ("prefill", "decode")
    assert m.components["head_fp16"].engine.precision == "fp16"
    out = capsys.readouterr().out
    assert "[tpo build] llm:" in out and "profile(s)" in out and "> Building engine" in out  # progress monitor


def test_rebuild_subset_for_compute_capability(export: Manifest) -> None:
    build_engines(export.root, builder=RTX, verbose=False)
    report = build_engines(export.root, builder=RTX, components=["vision"], compute_capabilities=["sm_89"],
                           verbose=False)
    assert report.compute_target == "rtx-jit:sm_89"
    m = Manifest.load(export.root)
    assert m.components["vision"].engine.compute_target == "rtx-jit:sm_89"
    assert m.components["llm"].engine.compute_target == "rtx-jit"
    with pytest.raises(ValueError, match=r"cannot target 'sm_90'; allowed: \[.*'sm_89'"):
        build_engines(export.root, builder=RTX, components=["vision"], compute_capabilities=["sm_90"])


@pytest.mark.parametrize("precision, match", [
    ("fp16", r"vision: tensorrt-rtx .* is strongly typed: precision follows the ONNX graph's types, and this graph "
             r"was exported as fp32, so it cannot be built as fp16. Re-export with `tpo export --precision fp16`"),
    ("int8", r"int8 needs a graph exported with INT8 Q/DQ nodes .* weight-only INT8 / INT4 engines for Orin are "
             r"planned"),
    ("fp8", r"fp8 needs a graph exported with FP8 Q/DQ nodes"),
])
def test_rtx_rejects_unsupported_precision_before_building(export: Manifest, precision: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_engines(export.root, builder=RTX, precision=precision, verbose=False)
    assert not list(export.root.glob("*.engine"))  # failed fast, nothing half-built
    assert Manifest.load(export.root).components["vision"].engine is None


def test_precision_rules_for_gpu_targets(export: Manifest) -> None:
    trt, spec = load_trt(RTX), export.components["vision"]
    fp8, bf16 = (ComponentSpec(**{**spec.__dict__, "precision": p}) for p in ("fp8", "bf16"))
    with pytest.raises(ValueError, match=r"fp8 needs sm_89\+ .* this GPU is sm_87. Orin \(sm_87\) runs fp16 or int8"):
        resolve_precision(trt, "llm", fp8, "fp8", Target("sm_87", sm=(8, 7)))
    with pytest.raises(ValueError, match=r"bf16 needs Ampere or newer \(sm_80\+\); this GPU is sm_75"):
        resolve_precision(trt, "llm", bf16, "bf16", Target("sm_75", sm=(7, 5)))
    with pytest.raises(ValueError, match=r"fp8 is not supported by TensorRT-RTX on \['sm_80', 'sm_86'\]"):
        resolve_precision(trt, "llm", fp8, "fp8", Target("rtx-jit"))
    plan = resolve_precision(trt, "llm", fp8, None, Target("rtx-jit:sm_89", rtx_targets=("sm_89",)))
    assert plan.strongly_typed and plan.flags == [] and plan.precision == "fp8"


def test_parse_failure_names_the_node(export: Manifest) -> None:
    m = toys.make_manifest(export.root, {**export.components, "bad": _bad_graph(export.root)})
    with pytest.raises(EngineBuildError, match=r"bad: tensorrt-rtx ONNX parse of bad.onnx failed:\n  - node "
                                               r"'my_fancy_node' \(FancyOp\): .*Plugin not found") as err:
        build_engines(m.root, builder=RTX, components=["bad"], verbose=False)
    assert err.value.component == "bad" and len(err.value.problems) == 1


def test_changed_onnx_stops_the_build(export: Manifest) -> None:
    with open(export.path_of("attn.onnx"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"component llm: file attn.onnx changed since export"):
        build_engines(export.root, builder=RTX, verbose=False)


def test_cli_and_timing_cache_on_rtx(export: Manifest, tmp_path: Path, capsys) -> None:
    cache, report = tmp_path / "timing.cache", tmp_path / "report.json"
    rc = main(["build", str(export.root), "--builder", RTX, "--components", "vision", "mask_image_encoder",
               "--timing-cache", str(cache), "--workspace-gib", "1", "--report", str(report), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "timing-cache calls are no-ops" in out and not cache.exists()  # RTX: no timing cache to persist
    data = json.loads(report.read_text())
    assert [c["component"] for c in data["components"]] == ["vision", "mask_image_encoder"]
    assert data["timing_cache"] is None and json.loads(out.strip().splitlines()[-1])["engines"] == 2
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['nope'\]"):
        build_engines(export.root, builder=RTX, components=["nope"])


def test_builder_auto_and_full_tensorrt(export: Manifest) -> None:
    """``auto`` takes full TensorRT where installed (Jetson / servers), else TensorRT-RTX; asking for full TensorRT
    where it is absent says what to install."""
    has_full = importlib.util.find_spec("tensorrt") is not None
    report = build_engines(export.root, builder="auto", components=["vision"], verbose=False)
    assert report.builder == ("tensorrt" if has_full else RTX)
    if not has_full:
        with pytest.raises(RuntimeError, match=r"no usable TensorRT module: tensorrt: .*install: JetPack"):
            build_engines(export.root, builder="tensorrt")
