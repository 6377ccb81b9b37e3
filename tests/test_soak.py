"""Soak: ``tpo stream`` over a video file played in a loop (each pass reopens it) with LLM re-asks in the background,
for 35 s in a subprocess sampled from /proc (scripts/soak.py): RSS, open descriptors and threads stay flat after the
warm-up. ``python scripts/soak.py --minutes 60`` runs the same for an hour."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_long_stream_keeps_memory_descriptors_and_threads_flat(export_dir, sample_videos):
    soak = _soak_module()
    cmd = [sys.executable, "-m", "runtime.cli", "stream", str(export_dir), "--source", sample_videos[0], "--prompt",
           "Track the red circle.", "--loop", "0", "--cadence", "30", "--window", "16", "--threads", "1", "--json"]
    report = soak.soak(cmd, seconds=35, sample_every=2.5, warmup=10)
    assert not report["ended_by_itself"], report["stderr_tail"]
    assert report["frames"] > 500 and report["answers"] >= 5 and report["bad_frames"] == 0, report
    assert len(report["samples"]) >= 10
    g = report["growth_after_warmup"]
    assert soak.verdict(report, max_rss_growth_mb=25) == [], (g, report["samples"])
