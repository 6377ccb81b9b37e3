"""Issue 13: what broke when tpo-edge was tried as a new user would. One test (or more) per row of the issue's table,
each through the command a user runs (``tpo ask`` / ``run`` / ``stream`` / ``eval``) or the library call behind it."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
from videos import VFR_PTS_MS, write_av1, write_vfr, write_video

from runtime.cli import main

pytestmark = pytest.mark.slow
BAD_UTF8 = os.fsdecode(b"Where is the \xff\xfe red circle?")  # what Python makes of raw bytes in argv


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _commands(export_dir, video) -> dict[str, list]:
    return {"ask": ["ask", "--video", video, "--max-new-tokens", 3],
            "run": ["run", export_dir, "--video", video, "--max-new-tokens", 3],
            "stream": ["stream", export_dir, "--source", video, "--max-new-tokens", 3, "--max-frames", 4]}


# ------------------------------------------------------------------------------------------- rows 1, 3, 6, 10
@pytest.mark.parametrize("prompt, message", [
    (BAD_UTF8, "not valid UTF-8"),  # row 1
    ("", "the prompt is empty"),  # row 10
    ("<tracking><temp>", "control token '<tracking>'"),  # row 6
    ("Where is it?</s>", "control token '</s>'"),
    ("<track_box>", "no box was given"),  # row 3
    ("why " * 5000, "KV cache holds"),  # row 3: a 20,000-character prompt
])
def test_bad_prompts_exit_2_in_ask_run_and_stream(export_dir, sample_videos, capsys, prompt, message):
    for name, argv in _commands(export_dir, sample_videos[0]).items():
        rc, out, err = _cli(capsys, *argv, "--prompt", prompt)
        assert rc == 2, (name, out, err)
        assert message in err and "Traceback" not in err, (name, err)
        assert out.strip() == "", (name, out)  # refused before any answer / before the first frame


# -------------------------------------------------------------------------------------------------- row 2
def test_cuda_without_a_gpu_exits_2(export_dir, sample_videos, capsys):
    for argv in (["run", export_dir, "--video", sample_videos[0], "--prompt", "What?"],
                 ["stream", export_dir, "--source", sample_videos[0], "--prompt", "What?"],
                 ["bench", export_dir, "--iters", 1]):
        rc, _, err = _cli(capsys, *argv, "--device", "cuda")
        assert rc == 2 and "no CUDA device found" in err and "--device cpu" in err and "Traceback" not in err, err
    from runtime.engines import cuda_device_count

    assert cuda_device_count() == 0, "this test runs on a machine without a CUDA device"


def test_cuda_device_but_no_cuda_execution_provider(export_dir, monkeypatch):
    import runtime.engines as engines
    from runtime.pipeline import Pipeline

    monkeypatch.setattr(engines, "cuda_device_count", lambda: 1)
    with pytest.raises(ValueError, match="no CUDAExecutionProvider.*onnxruntime-gpu.*--device cpu"):
        Pipeline.from_manifest(export_dir, device="cuda")
    with pytest.raises(ValueError, match="cuda:3.*1 CUDA device"):
        Pipeline.from_manifest(export_dir, device="cuda:3")


# -------------------------------------------------------------------------------------------------- row 4
def test_variable_frame_rate_uses_presentation_times(pipe, tmp_path):
    from runtime.preprocess import sample_indices
    from tpo_core.data.video import read_video

    path = write_vfr(tmp_path / "vfr.mp4")
    pts = np.asarray(VFR_PTS_MS) / 1000
    idx = sample_indices(len(pts), pipe.num_frames)
    clip = pipe.load_clip(str(path))
    np.testing.assert_allclose(clip.timestamps, pts[idx], atol=1e-3)  # not idx / average fps
    assert clip.duration == pytest.approx(pts[-1] + 1 / 30, abs=2e-3)
    ref = read_video(path, pipe.num_frames)  # the reference reader is the same function
    np.testing.assert_array_equal(ref.timestamps, clip.timestamps)
    from runtime.video_io import read_clip_pyav  # the PyAV fallback follows the same rule

    alt = read_clip_pyav(path, pipe.num_frames)
    np.testing.assert_allclose(alt.timestamps, clip.timestamps, atol=1e-3)
    assert alt.duration == pytest.approx(clip.duration, abs=2e-3)
    frames = list(pipe.stream(str(path), "What is it?", cadence=0, max_new_tokens=2))
    np.testing.assert_allclose([r.timestamp for r in frames], pts, atol=1e-3)
    from runtime.contract.routing import force_token

    res = pipe.ask(clip, "When is it visible?", max_new_tokens=4,
                   logits_processor=force_token(pipe.manifest.task_tokens["<time_begin>"].id, 0))
    assert res.video["timestamps"] == pytest.approx(pts[idx].tolist(), abs=1e-3)
    assert all(0 <= s.start <= s.end <= clip.duration for s in res.temporal.spans)


def test_constant_frame_rate_times_are_exact(sample_videos):
    from runtime.video_io import read_clip

    clip = read_clip(sample_videos[0], 8)
    np.testing.assert_array_equal(clip.timestamps, clip.indices / clip.fps)
    assert clip.duration == clip.num_total_frames / clip.fps


# -------------------------------------------------------------------------------------------------- row 5
def test_swapped_token_ids_in_tokenizer_json_are_refused(export_dir, tmp_path, capsys):
    folder = tmp_path / "exp"
    shutil.copytree(export_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    rc, _, err = _cli(capsys, "run", folder, "--video", "x.mp4", "--prompt", "What?")
    assert rc == 2 and "tokenizer: file tokenizer.json changed since export" in err


# ------------------------------------------------------------------------------------------------ rows 7, 8
def test_run_out_writes_every_frame_of_a_long_video(export_dir, tmp_path, capsys):
    import av

    video = write_video(tmp_path / "long.mp4", 1000, fps=30, size=(24, 32))  # > the old 900-frame cap
    rc, _, err = _cli(capsys, "run", export_dir, "--video", video, "--prompt", "What is it?", "--max-new-tokens", 2,
                      "--out", tmp_path / "out")
    assert rc == 0, err
    with av.open(str(tmp_path / "out" / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 1000


def _peak_rss_mb_of_run_out(export_dir, video, out) -> float:
    import subprocess
    import sys

    code = ("import resource, sys; from runtime.cli import main; "
            f"rc = main(['run', {str(export_dir)!r}, '--video', {str(video)!r}, '--prompt', 'What is it?', "
            f"'--max-new-tokens', '2', '--out', {str(out)!r}]); "
            "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    rc, peak = done.stdout.split()[-2:]
    assert rc == "0", done.stderr[-2000:]
    return float(peak)


def test_run_out_memory_does_not_grow_with_the_video_length(export_dir, tmp_path):
    """1440p: 16 vs 64 frames. Before the streaming writer, peak RSS grew ~12 MB per frame (decord's batch reader
    and x264's lookahead queue): 1.46 GB for 30 frames, 2.53 GB for 120."""
    import av

    short = write_video(tmp_path / "short.mp4", 16, fps=30, size=(1440, 2560))
    long = write_video(tmp_path / "long.mp4", 64, fps=30, size=(1440, 2560))
    peaks = [_peak_rss_mb_of_run_out(export_dir, v, tmp_path / v.stem) for v in (short, long)]
    assert peaks[1] - peaks[0] < 120, peaks  # 48 more 1440p frames: ~530 MB more before the fix
    with av.open(str(tmp_path / "long" / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 64


# -------------------------------------------------------------------------------------------------- row 9
def test_av1_in_the_runtime_names_the_codec(export_dir, tmp_path, capsys):
    path = write_av1(tmp_path / "av1.mp4")
    for argv in (["run", export_dir, "--video", path], ["stream", export_dir, "--source", path]):
        rc, out, err = _cli(capsys, *argv, "--prompt", "What is it?", "--max-new-tokens", 2)
        assert rc == 2 and "codec 'av1'" in err and "ffmpeg -i IN -c:v libx264" in err, err
        assert "fetch it again" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------- row 11
def test_box_option_in_ask_run_and_stream(export_dir, sample_videos, capsys):
    for name, argv in _commands(export_dir, sample_videos[0]).items():
        rc, out, err = _cli(capsys, *argv, "--prompt", "Track this object.", "--box", "10,8,40,30", "--json")
        assert rc == 0, (name, err)
        assert out.strip(), name
        for bad, msg in (("1,2,3", "four numbers"), ("40,8,10,30", "x0 < x1"), ("10,8,4000,30", "outside")):
            rc, _, err = _cli(capsys, *argv, "--prompt", "Track this object.", "--box", bad)
            assert rc == 2 and msg in err, (name, bad, err)


# ------------------------------------------------------------------------------------------------- row 13
def test_one_frame_video_says_so(pipe, tmp_path, capsys, export_dir):
    path = write_video(tmp_path / "one.mp4", 1)
    res = pipe.ask(str(path), "What is it?", max_new_tokens=2)
    assert any("1 frame" in n and "repeated" in n for n in res.notes), res.notes
    rc, out, _ = _cli(capsys, "run", export_dir, "--video", path, "--prompt", "What?", "--max-new-tokens", 2, "--json")
    assert rc == 0 and "1 frame" in json.dumps(json.loads(out)["results"][0]["notes"])


# ------------------------------------------------------------------------------------------------- row 14
def test_eval_accepts_the_embedded_checkpoint(synth_root, capsys):
    rc, out, err = _cli(capsys, "eval", "--checkpoint", "embedded", "--data", synth_root, "--limit", 2, "--json")
    assert rc == 0, err
    assert json.loads(out)["checkpoint"] == "embedded"


# ------------------------------------------------------------------------------------------------- row 15
def test_manifest_missing_llm_file_names_the_key(export_dir, tmp_path, capsys):
    folder = tmp_path / "exp"
    shutil.copytree(export_dir, folder)
    data = json.loads((folder / "manifest.json").read_text())
    broken = copy.deepcopy(data)
    del broken["components"]["llm"]["file"]
    (folder / "manifest.json").write_text(json.dumps(broken))
    rc, _, err = _cli(capsys, "run", folder, "--video", "x.mp4", "--prompt", "What?")
    assert rc == 2 and "components.llm.file is missing" in err and "tpo export" in err
    assert "ComponentSpec.__init__" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ object not found
def test_absent_object_is_reported_in_results_and_annotations():
    from runtime.annotate import mask_label
    from runtime.results import FrameResult, MaskResult

    masks = np.zeros((3, 8, 10), bool)
    masks[1, 2:5, 3:6] = True
    res = MaskResult.from_masks(masks, [0.0, 0.5, 1.0], [-2.0, 3.0, 0.0])
    assert res.present.tolist() == [False, True, False]
    assert res.to_dict()["present"] == [False, True, False]
    assert mask_label(res, 0) == "not found" and mask_label(res, 1) == "" and mask_label(None, 0) == ""
    fr = FrameResult(index=0, timestamp=0.0, mask=MaskResult.from_masks(masks[:1], [0.0], [-1.0]), box=None,
                     object_score=-1.0)
    assert fr.present is False and fr.to_dict()["present"] is False
