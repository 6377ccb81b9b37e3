"""GPU runtime checks (deselected on CPU machines): ORT CUDA and TensorRT pipelines equal the reference, streams
keep device memory flat, and the per-stage benchmark is written to ``$OUT`` (when set).

One command on the GPU machine (writes results under $OUT)::

    OUT=${OUT:-/tmp/out} python -m pytest -m gpu tests/test_runtime_gpu.py -q -rA 2>&1 | tee $OUT/runtime_gpu.log
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    from export.demo import cached_export

    env = os.environ.get("TPO_EDGE_CACHE")
    cache = Path(env) if env else tmp_path_factory.getbasetemp() / "tpo-edge-cache"
    return cached_export("embedded", cache, log=print)


@pytest.fixture(scope="session")
def engine_dir(export_dir, tmp_path_factory) -> Path:
    """A copy of the export with TensorRT engines built by ``tpo build``."""
    from runtime.cli import main

    out = tmp_path_factory.mktemp("trt") / "export"
    shutil.copytree(export_dir, out)
    assert main(["build", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def reference():
    from tpo_core.model import load_model

    return load_model("embedded")


def _compare(pipe, reference, videos, questions):
    from test_runtime_parity import assert_same  # tests/ is on sys.path (pytest rootdir-less import)

    from runtime.contract.routing import force_token
    from tpo_core.data.video import read_video

    for video in videos:
        clip = read_video(video, reference.config.vision.num_frames)
        for q in questions:
            assert_same(reference.generate(clip, q, max_new_tokens=10), pipe.ask(video, q, max_new_tokens=10))
        for begin in ("<box_begin>", "<time_begin>", "<track_begin>"):
            lp = force_token(pipe.manifest.task_tokens[begin].id, 1)
            assert_same(reference.generate(clip, "Find it.", max_new_tokens=6, logits_processor=lp),
                        pipe.ask(video, "Find it.", max_new_tokens=6, logits_processor=lp))


QUESTIONS = ("What is in the video?", "When does the red circle appear?")


@pytest.mark.parametrize("cuda_graphs", [True, False], ids=["cuda-graphs", "plain"])
def test_ort_cuda_matches_reference(export_dir, reference, sample_videos, cuda_graphs):
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_manifest(export_dir, backend="ort", device="cuda", cuda_graphs=cuda_graphs)
    _compare(pipe, reference, sample_videos, QUESTIONS)
    print(json.dumps(pipe.graph_status, indent=1))


def test_cuda_graphs_capture_the_fixed_shape_engines_and_track_like_plain(export_dir):
    """A tracked stream with CUDA graphs gives the plain engines' masks, frame by frame; the vision and head engines
    run from graphs, and every mask engine either does or says why not (a capture that fails falls back to a plain
    session, recorded in graph_status: the status is printed for the log)."""
    from runtime.contract.routing import force_token
    from runtime.pipeline import Pipeline

    frames = np.random.default_rng(3).integers(0, 256, (24, 240, 320, 3), dtype=np.uint8)
    frames[:, 80:160, 100:200] = (230, 30, 30)
    boxes = {}
    for graphs in (True, False):
        pipe = Pipeline.from_manifest(export_dir, backend="ort", device="cuda", cuda_graphs=graphs)
        lp = force_token(pipe.manifest.task_tokens["<track_begin>"].id, 0)
        res = list(pipe.stream(iter(frames), "Track the red box.", cadence=0, window=8, max_new_tokens=3,
                               logits_processor=lp))
        assert all(r.ok for r in res)
        boxes[graphs] = [(r.box, r.object_score) for r in res]
        if graphs:
            status = pipe.graph_status
            print(json.dumps(status, indent=1))
            for name in ("vision", "mask_prompt"):
                assert "cuda graph" in status[name].values(), (name, status[name])
            for name in ("mask_memory_attention", "mask_decoder", "mask_memory_encoder", "mask_image_encoder"):
                assert status[name] and all(v == "cuda graph" or v.startswith("plain: ") for v in
                                            status[name].values()), (name, status[name])
    for (b1, s1), (b0, s0) in zip(boxes[True], boxes[False]):
        assert abs(s1 - s0) <= 1e-3 * max(1.0, abs(s0))
        assert (b1 is None) == (b0 is None) and (b1 is None or np.abs(np.subtract(b1, b0)).max() <= 1)


@pytest.mark.trt
def test_tensorrt_matches_reference(engine_dir, reference, sample_videos):
    from runtime.pipeline import Pipeline

    _compare(Pipeline.from_manifest(engine_dir, backend="tensorrt", device="cuda"), reference, sample_videos,
             QUESTIONS)


@pytest.mark.parametrize("backend", ["ort", pytest.param("tensorrt", marks=pytest.mark.trt)])
def test_cuda_stream_memory_is_flat(export_dir, request, backend):
    import torch

    from runtime.contract.routing import force_token
    from runtime.pipeline import Pipeline

    folder = request.getfixturevalue("engine_dir") if backend == "tensorrt" else export_dir
    pipe = Pipeline.from_manifest(folder, backend=backend, device="cuda")
    lp = force_token(pipe.manifest.task_tokens["<track_begin>"].id, 0)
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    seen, mem = 0, []
    for r in pipe.stream((frame for _ in range(1500)), "Track it.", cadence=500, window=16, max_new_tokens=3,
                         logits_processor=lp):
        assert r.ok, r.error
        seen += 1
        if seen in (300, 1500):
            torch.cuda.synchronize()
            mem.append(torch.cuda.memory_allocated())
    assert seen == 1500 and mem[1] - mem[0] < 8 * 2**20


@pytest.mark.parametrize("backend", ["ort", pytest.param("tensorrt", marks=pytest.mark.trt)])
def test_bench_cuda_writes_json(export_dir, request, backend):
    from runtime.bench import print_report, run_bench

    folder = request.getfixturevalue("engine_dir") if backend == "tensorrt" else export_dir
    report = run_bench(folder, backend=backend, device="cuda", size=(1080, 1920), iters=50, warmup=5, tokens=64)
    print_report(report)
    assert report["gpu"] and report["stages_ms"]["decode_token"]["p50"] > 0
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"runtime_bench_{backend}_cuda.json").write_text(json.dumps(report, indent=2) + "\n")


def test_cuda_background_stream_answers_its_window_and_tracks_from_the_device_ring(export_dir):
    """On CUDA the window ring lives on the device and a re-ask gets a device gather of it on the low-priority
    stream: each answer equals a plain ask of the frames it was asked on; tracking reads the ring from the answer on."""
    import time

    from runtime.contract.routing import force_token
    from runtime.pipeline import Pipeline

    pipe = Pipeline.from_manifest(export_dir, backend="ort", device="cuda")
    frames = np.random.default_rng(5).integers(0, 256, (40, 120, 160, 3), dtype=np.uint8)

    def paced():
        for f in frames:
            time.sleep(0.01)
            yield f

    res = list(pipe.stream(paced(), "What is it?", cadence=10, window=8, max_new_tokens=4, background=True))
    answered = [r for r in res if r.answer is not None]
    assert len(res) == 40 and len(answered) >= 3
    assert all(r.ok for r in res), [(r.index, r.error) for r in res if not r.ok]
    for r in answered:
        lo = max(0, r.asked_at - 7)
        want = pipe.ask(frames[lo:r.asked_at + 1], "What is it?", max_new_tokens=4, fps=30.0)
        assert r.answer.token_ids == want.token_ids
    lp = force_token(pipe.manifest.task_tokens["<track_begin>"].id, 0)
    tracked = list(pipe.stream(paced(), "Track it.", cadence=0, window=8, max_new_tokens=3, logits_processor=lp,
                               background=True))
    first = next(i for i, r in enumerate(tracked) if r.answer is not None)
    assert all(r.ok for r in tracked) and all(r.mask is not None for r in tracked[first:])
