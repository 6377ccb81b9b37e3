"""``tpo run`` / ``tpo stream`` / ``tpo bench`` / ``tpo demo`` end to end on the exported tiny model (CPU), and the
runtime's import hygiene."""

import ast
import json
import re
from pathlib import Path

import pytest

from runtime.cli import main

pytestmark = pytest.mark.slow
RUNTIME = Path(__file__).resolve().parents[1] / "runtime"


def test_run_json_and_out(export_dir, sample_videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(export_dir), "--video", sample_videos[0], "--prompt", "What is it?", "--prompt",
                 "When does it start?", "--max-new-tokens", "5", "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in data["results"]] == ["What is it?", "When does it start?"]
    assert all(len(r["token_ids"]) <= 5 and "timings_ms" in r for r in data["results"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"][0]["token_ids"] == data["results"][0]["token_ids"]
    import av

    with av.open(str(out / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) > 1


def test_stream_json_lines(export_dir, sample_videos, capsys):
    assert main(["stream", str(export_dir), "--source", sample_videos[0], "--prompt", "What is it?",
                 "--cadence", "5", "--max-frames", "7", "--max-new-tokens", "2", "--json", "--sync"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["index"] for x in lines] == list(range(7))
    assert [x["index"] for x in lines if "answer" in x] == [0, 5]


@pytest.mark.parametrize("flag", [[], ["--no-defer"]])
def test_stream_background_gate_flag(export_dir, sample_videos, capsys, monkeypatch, flag):
    """Background re-asks go through the frame gate unless --no-defer; either way the answers arrive."""
    from runtime.pipeline import Pipeline

    seen = {}
    original = Pipeline.stream

    def spy(self, source, prompt, **kwargs):
        seen.update(kwargs)
        return original(self, source, prompt, **kwargs)

    monkeypatch.setattr(Pipeline, "stream", spy)
    assert main(["stream", str(export_dir), "--source", sample_videos[0], "--prompt", "What is it?",
                 "--cadence", "0", "--max-frames", "4", "--max-new-tokens", "2", "--json", *flag]) == 0
    assert seen["background"] is True and seen["defer_reasks"] is (not flag)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["index"] for x in lines] == list(range(4))


def test_bench_json(export_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(export_dir), "--iters", "2", "--warmup", "1", "--tokens", "4", "--size", "48x64",
                 "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    stages = report["stages_ms"]
    for name in ("preprocess", "vision", "prefill", "decode_token", "head_region", "head_temporal", "mask_frame",
                 "mask_decode", "e2e_frame", "ask"):
        assert {"p50", "p90", "p99"} <= set(stages[name]), name
    assert report["peak_rss_mb"] > 0 and "onnxruntime" in report["versions"] and report["device"] == "cpu"


def test_demo_runs_every_task(export_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TPO_EDGE_CACHE", str(export_dir.parents[1]))  # <cache>/exports/<key>: the demo's cache
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    text = capsys.readouterr().out
    assert text.count("\nQ: ") == 4
    # every answer is scored against the generated video's labels (QA: the video's own first question)
    truth = [line.strip() for line in text.splitlines() if line.strip().startswith("truth:")]
    assert len(truth) == 4, text
    assert re.search(r"-> (right|wrong)$", truth[0]) and re.search(r"IoU \d\.\d\d$", truth[1])
    assert re.search(r"IoU \d\.\d\d$", truth[2]) and re.search(r"J \d\.\d\d, J&F \d\.\d\d$", truth[3])
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    tasks = [r["tasks"] for r in saved["results"]]
    assert tasks[1:] == [["region"], ["temporal"], ["mask"]]  # forced with the untrained model, else its own
    assert (tmp_path / "demo" / "annotated.mp4").stat().st_size > 0


def test_a_backend_failure_is_a_message_and_exit_1(export_dir, sample_videos, monkeypatch, capsys):
    """An engine that ONNX Runtime cannot load (RuntimeError naming the part) ends the command with that message and
    exit 1, not a traceback (bad input stays exit 2)."""
    from runtime.pipeline import Pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("head_region: ONNX Runtime could not load head_region.onnx: Type Error")

    monkeypatch.setattr(Pipeline, "from_manifest", classmethod(lambda cls, *a, **k: broken()))
    assert main(["run", str(export_dir), "--video", sample_videos[0], "--prompt", "Where is it?"]) == 1
    err = capsys.readouterr().err
    assert "tpo run: failed: head_region: ONNX Runtime could not load" in err and "Traceback" not in err


def test_runtime_library_does_not_import_the_toolkit():
    """runtime/ never imports tpo_core, transformers, peft or export (the demo lives in export/demo.py)."""
    banned = ("tpo_core", "transformers", "peft", "export")
    for path in RUNTIME.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in banned:
                    raise AssertionError(f"{path} imports {name}")
