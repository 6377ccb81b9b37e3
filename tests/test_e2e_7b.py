"""benchmarks/e2e_7b.py (and e2e_mask.py) end to end at the tiny preset on the CPU: the two export phases and their
merge, the answer timings through the runtime's Pipeline, the PyTorch reference, and the per-frame mask comparison
with transformers' Sam2VideoModel. The 7B run itself needs the GPU machine (docs/e2e_7b.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "tiny", "--device", "cpu", "--precision", "fp32", "--threads", "2", "--llm-graph", "plain"]
CLIP = ["--height", "72", "--clip-seconds", "2"]


def _load():
    spec = importlib.util.spec_from_file_location("e2e_7b", ROOT / "benchmarks" / "e2e_7b.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def e2e():
    return _load()


@pytest.fixture(scope="module")
def state(e2e, tmp_path_factory) -> Path:
    """The tiny export made by the two 7B export phases (LLM part, the rest + merge)."""
    st = tmp_path_factory.mktemp("e2e_state")
    assert e2e.main([*SMALL, "--phase", "export-llm", "export-rest", "--exporter", "torchscript",
                     "--state", str(st)]) == 0
    return st


def _run(e2e, state: Path, out: Path, *extra: str) -> dict:
    assert e2e.main([*SMALL, *CLIP, "--phase", "bench", "--state", str(state), "--out", str(out), *extra]) == 0
    files = list(out.glob("e2e_7b_*.json"))
    assert [f.name for f in files] == ["e2e_7b_cpu_tiny.json"]
    return json.loads(files[0].read_text())


def test_export_phases_merge_into_one_verified_manifest(state):
    from runtime.manifest import REQUIRED_COMPONENTS, Manifest

    m = Manifest.load(state / "export")  # every hash checked
    assert set(REQUIRED_COMPONENTS) <= set(m.components)
    assert m.source.checkpoint == "random:tiny:seed0" and m.precision == "fp32"
    assert not (state / "llm_part").exists()
    report = json.loads((state / "export" / "export_report.json").read_text())
    assert set(report["components"]) == set(m.components)
    assert [p["components"] for p in report["phases"]][0] == ["llm"]


def test_random_build_is_the_same_per_part_whatever_else_is_built(e2e):
    full = e2e.build_random("tiny", "fp32", seed=0)
    alone = e2e.build_random("tiny", "fp32", seed=0, parts=("mask_head",))
    other = e2e.build_random("tiny", "fp32", seed=1, parts=("mask_head",))
    a, b, c = (m.mask_head.state_dict() for m in (full, alone, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 16)
    assert next(alone.llm.parameters()).is_meta  # only the asked part is materialized


def test_export_rest_needs_the_llm_phase_first(e2e, tmp_path):
    with pytest.raises(ValueError, match="export-llm first"):
        e2e.main([*SMALL, "--phase", "export-rest", "--state", str(tmp_path)])


@pytest.mark.slow
def test_bench_times_every_stage_reference_and_mask_peer(e2e, state, tmp_path, capsys):
    rep = _run(e2e, state, tmp_path, "--paths", "host", "--reps", "2", "--warmup", "1", "--tokens", "6",
               "--hf-dtypes", "fp32", "--mask-reps", "3")
    assert rep["device"] == "cpu" and rep["command"].startswith("python ") and rep["versions"]["torch"]
    ans = rep["answers"]["host"]["describe"]
    stages = sum(ans[k]["median"] for k in ("read_ms", "preprocess_ms", "vision_ms", "prefill_ms"))
    assert 0 < stages <= ans["first_token_ms"]["median"] <= ans["answer_ms"]["median"]
    assert ans["read_ms"]["n"] == 2 and len(ans["token_ids"]) <= 6
    for head in ("region", "temporal", "mask"):  # each head forced once: every component ran
        assert rep["answers"]["host"][head]["tasks"] == [head]
    # the fp32 runtime and the fp32 PyTorch reference of the same random weights choose the same greedy tokens
    assert rep["reference"]["weights"].startswith("same weights")
    assert rep["reference"]["same_tokens_prefix"] == len(ans["token_ids"])
    mf = rep["mask_frame"]
    assert mf["fill_frames"] >= 17 and mf["timed_frames"] == 3 and mf["frame_hw"] == [72, 128]
    for side in (mf["ours"], mf["hf"]["fp32"]):
        assert "error" not in side
        assert 0 < side["model"]["median"] <= side["model+upsample"]["median"] <= side["total"]["median"]
        assert side["total"]["n"] == 3
    assert mf["hf"]["fp32"]["processor"] in ("Sam2VideoProcessor", "replica")
    assert "same config and weights" in mf["peer_weights"]
    out = capsys.readouterr().out
    assert "Time to first answer" in out and "ratio" in out and "HF fp32" in out


@pytest.mark.slow
def test_device_video_path_gives_the_host_path_tokens(state, tmp_path):
    """The device path (read_clip_cuda + fused Triton preprocessing, here on CPU tensors in Triton's interpreter)
    through the same Pipeline.ask: the same greedy tokens as the host path (the kernels are bit-exact)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e_7b.py"), *SMALL, *CLIP, "--phase", "bench", "--state",
           str(state), "--out", str(tmp_path), "--paths", "host", "device", "--heads", "--reps", "1", "--warmup",
           "0", "--tokens", "3", "--skip-mask", "--no-reference"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "e2e_7b_cpu_tiny.json").read_text())
    host, dev = rep["answers"]["host"]["describe"], rep["answers"]["device"]["describe"]
    assert dev["decoder"] == "decord" and host["decoder"] == "decord"  # no NVDEC on the CPU
    assert dev["token_ids"] == host["token_ids"] and len(dev["token_ids"]) == 3


@pytest.mark.slow
def test_gqa_llm_phase_merges_and_answers_like_the_reference(e2e, tmp_path):
    """``--llm-graph gqa`` (ONNX Runtime GenAI's builder, fp32 on the CPU provider): the LLM phase's kv block
    survives the merge, and Pipeline (OrtLLM) chooses the PyTorch reference's greedy tokens."""
    from runtime.manifest import Manifest

    state = tmp_path / "state"
    gqa = [*SMALL[:-1], "gqa"]
    assert e2e.main([*gqa, "--phase", "export-llm", "export-rest", "--exporter", "torchscript", "--state",
                     str(state)]) == 0
    assert Manifest.load(state / "export").kv.graph == "gqa"
    rep = _run(e2e, state, tmp_path / "out", "--paths", "host", "--heads", "--reps", "1", "--warmup", "0",
               "--tokens", "5", "--skip-mask")  # the bench reads kv.graph from the manifest, whatever --llm-graph
    assert rep["llm_graph"] == "gqa"
    tokens = rep["answers"]["host"]["describe"]["token_ids"]
    assert len(tokens) >= 3 and rep["reference"]["same_tokens_prefix"] == len(tokens)
