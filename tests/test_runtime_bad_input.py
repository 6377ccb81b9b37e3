"""Bad input never hangs and never answers silently wrong: each case is a clear error (or a note)."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.video_io import SourceError, VideoReadError

pytestmark = pytest.mark.slow


def test_corrupt_empty_missing_and_image_files(pipe, sample_videos, tmp_path):
    data = Path(sample_videos[0]).read_bytes()
    cases = {"truncated.mp4": (data[: len(data) // 2], "truncated"), "empty.mp4": (b"", "empty"),
             "image.mp4": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG image"),
             "garbage.mp4": (os.urandom(4096), "corrupt|cannot be decoded")}
    for name, (payload, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(VideoReadError, match=msg):
            pipe.ask(str(path), "What is it?")
    with pytest.raises(VideoReadError, match="does not exist"):
        pipe.ask(str(tmp_path / "nope.mp4"), "What is it?")
    with pytest.raises(VideoReadError, match="not a regular file"):
        pipe.ask(str(tmp_path), "What is it?")


def test_image_array_and_bad_arrays(pipe):
    with pytest.raises(ValueError, match="single image"):
        pipe.ask(np.zeros((48, 64, 3), np.uint8), "What is it?")
    with pytest.raises(ValueError, match="uint8"):
        pipe.ask(np.zeros((8, 48, 64, 3), np.float32), "What is it?")
    with pytest.raises(ValueError, match="non-empty string"):
        pipe.ask(np.zeros((8, 48, 64, 3), np.uint8), "   ")


def test_prompt_longer_than_kv_capacity(pipe):
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    cap = pipe.generator.capacity
    with pytest.raises(ValueError, match=rf"prompt is \d+ tokens .*KV cache holds {cap}.*shorten the question"):
        pipe.ask(frames, "why " * (2 * cap), max_new_tokens=4)
    with pytest.raises(ValueError, match=r"max_new_tokens=100000.*lower max_new_tokens to <= \d+"):
        pipe.ask(frames, "What is it?", max_new_tokens=100000)
    assert pipe.ask(frames, "What is it?", max_new_tokens=3).token_ids  # the pipeline still works afterwards


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_that_does_not_match_the_engines(export_dir, tmp_path):
    from runtime.manifest import ManifestError
    from runtime.pipeline import Pipeline

    bad = _copy_export(export_dir, tmp_path / "renamed")
    m = json.loads((bad / "manifest.json").read_text())
    m["components"]["head_region"]["inputs"][0]["name"] = "task_emb"
    (bad / "manifest.json").write_text(json.dumps(m))
    want = r"head_region: graph head_region.onnx has inputs \['task_embedding'.*the manifest says \['task_emb'"
    with pytest.raises(ValueError, match=want):
        Pipeline.from_manifest(bad)

    swapped = _copy_export(export_dir, tmp_path / "swapped")
    shutil.copy(swapped / "head_region.onnx", swapped / "mask_prompt.onnx")
    with pytest.raises(ManifestError, match="mask_prompt.onnx changed since export"):
        Pipeline.from_manifest(swapped)
    with pytest.raises(ValueError, match="mask_prompt: graph mask_prompt.onnx has inputs"):
        Pipeline.from_manifest(swapped, verify_hashes=False)  # even unhashed, the IO check catches it

    shape = _copy_export(export_dir, tmp_path / "shape")
    m = json.loads((shape / "manifest.json").read_text())
    m["tensors"]["box_token"]["shape"] = [3]
    (shape / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="tensor box_token: file box_token.npy has shape"):
        Pipeline.from_manifest(shape)


def test_huge_resolution_video_is_downscaled_with_a_note(pipe, tmp_path):
    from runtime.contract.routing import force_token
    from tpo_core.data.synth import write_mp4

    w, h = 8320, 64
    frames = [np.full((h, w, 3), 40 * i % 255, np.uint8) for i in range(6)]
    path = tmp_path / "wide.mp4"
    write_mp4(path, frames, 6, w, h, "libx264")  # MPEG-4 part 2 stops at 8191 px
    tid = pipe.manifest.task_tokens["<box_begin>"].id
    res = pipe.ask(str(path), "Where is it?", max_new_tokens=4, logits_processor=force_token(tid, 0))
    assert any("8192 px limit" in n for n in res.notes)
    assert res.video["width"] == w and res.video["height"] == h
    x0, y0, x1, y1 = res.region.box
    assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # source pixels, not decoded pixels
    assert "notes" in res.to_dict()


def test_unreachable_stream_fails_fast(pipe):
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="cannot open stream"):
        pipe.stream("rtsp://127.0.0.1:9/nothing", "What is it?")
    with pytest.raises(SourceError, match="cannot open camera"):
        pipe.stream(97, "What is it?")
    with pytest.raises(SourceError, match="cannot stream from a float"):
        pipe.stream(1.5, "What is it?")
    assert time.perf_counter() - t0 < 30


def test_untrained_head_is_refused_by_the_runtime(export_dir, sample_videos, tmp_path):
    """A manifest listing heads.untrained (e.g. a converted VideoChat-TPO without a trained temporal head): a request
    routed there is refused with the reason; the other heads still answer."""
    from runtime.contract.routing import force_token
    from runtime.pipeline import Pipeline

    folder = _copy_export(export_dir, tmp_path / "untrained")
    m = json.loads((folder / "manifest.json").read_text())
    m["heads"]["untrained"] = ["temporal"]
    (folder / "manifest.json").write_text(json.dumps(m))
    pipe = Pipeline.from_manifest(folder)
    ids = {k: v.id for k, v in pipe.manifest.task_tokens.items()}
    box = pipe.ask(sample_videos[0], "Where is it?", max_new_tokens=3, logits_processor=force_token(ids["<box_begin>"]))
    assert box.region is not None
    with pytest.raises(ValueError, match=r"temporal head, which this export has no trained weights for"):
        pipe.ask(sample_videos[0], "When?", max_new_tokens=3, logits_processor=force_token(ids["<time_begin>"]))
