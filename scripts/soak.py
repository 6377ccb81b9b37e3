"""Soak test: ``tpo stream`` over a video file played in a loop, for a long time, with LLM re-asks; checks that RSS,
open file descriptors and threads stay flat and reports the per-frame latency.

    python scripts/soak.py [--export DIR] [--video PATH] [--prompt "Track {obj}."] [--minutes 60] [--cadence 30]
                           [--device cpu|cuda] [--sync] [--sample-every 30] [--warmup 60] [--out FILE_OR_DIR]

1. The export: ``--export`` or the embedded model exported once (``export.demo.cached_export``).
2. The video: ``--video`` or the generated sample video (``tpo_core.data.sample``; ``{obj}`` in the prompt names its
   object, and the embedded model routes "Track {obj}." to the mask head, so frames are tracked).
3. ``tpo stream EXPORT --source VIDEO --loop 0 --cadence N --json`` runs in a subprocess (each pass reopens the
   file: a descriptor leak per pass would show); this script reads its JSON lines and samples ``/proc/PID``
   (VmRSS, open descriptors, threads) every ``--sample-every`` s. After ``--minutes`` it stops the stream (SIGINT).
4. Verdict: after ``--warmup`` s, RSS may grow by at most ``--max-rss-growth-mb`` and descriptors / threads by at
   most 2 (a file being reopened at a loop boundary, the re-ask worker); exit 1 otherwise. ``--out``: a JSON
   file, or a directory (then ``soak_<device>.json``), with every sample, the growths, the latency percentiles,
   frames, answers and bad frames.

Linux only (/proc). ``tests/test_soak.py`` runs the same for one minute on a small video (``slow``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def proc_sample(pid: int) -> dict:
    """RSS (MB), open descriptors and threads of process ``pid`` from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return {"rss_mb": round(rss, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


class _Reader(threading.Thread):
    """Reads the stream's JSON lines: frame count, latencies, answers, bad frames."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.frames, self.answers, self.errors, self.tracked, self.latency = pipe, 0, 0, 0, 0, []

    def run(self) -> None:
        for line in self.pipe:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.frames += 1
            self.answers += "answer" in r
            self.errors += "error" in r
            self.tracked += "area" in r
            self.latency.append(float(r.get("latency_ms", 0.0)))


def soak(cmd: list[str], seconds: float, sample_every: float, warmup: float, env: dict | None = None) -> dict:
    """Run ``cmd`` (a ``tpo stream ... --json`` command) for ``seconds``, sampling it; -> the report dict."""
    # stdout belongs to the reader thread alone (communicate() would read it too and close it under the thread);
    # stderr goes to a file, so a chatty process cannot block on a full pipe
    err_file = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
    reader = _Reader(proc.stdout)
    reader.start()
    samples, t0 = [], time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and proc.poll() is None:
            time.sleep(min(sample_every, max(0.0, seconds - (time.monotonic() - t0))))
            if proc.poll() is None:
                t = round(time.monotonic() - t0, 1)
                samples.append({"t_s": t, "frames": reader.frames, **proc_sample(proc.pid)})
    finally:
        ended_by_itself = proc.poll() is not None
        if not ended_by_itself:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)  # the pipe's end: the reader has every line
        err_file.seek(0)
        err = err_file.read()
        err_file.close()
    steady = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    growth = {k: round(steady[-1][k] - steady[0][k], 1) if steady else None for k in ("rss_mb", "fds", "threads")}
    lat = np.asarray(reader.latency[len(reader.latency) // 10:] or [0.0])
    return {"seconds": round(time.monotonic() - t0, 1), "frames": reader.frames, "answers": reader.answers,
            "tracked_frames": reader.tracked, "bad_frames": reader.errors,
            "fps": round(reader.frames / max(seconds, 1e-9), 2),
            "latency_ms": {q: float(np.percentile(lat, p)) for q, p in (("p50", 50), ("p99", 99), ("max", 100))},
            "growth_after_warmup": growth, "samples": samples, "ended_by_itself": ended_by_itself,
            "returncode": proc.returncode, "stderr_tail": err[-2000:] if err else ""}


def verdict(report: dict, max_rss_growth_mb: float) -> list[str]:
    """Problems found (empty: flat)."""
    g, out = report["growth_after_warmup"], []
    if report["ended_by_itself"]:
        out.append(f"the stream ended by itself (exit {report['returncode']}): {report['stderr_tail'][-300:]}")
    if g["rss_mb"] is not None and g["rss_mb"] > max_rss_growth_mb:
        out.append(f"RSS grew by {g['rss_mb']:.1f} MB after the warm-up (limit {max_rss_growth_mb} MB)")
    for k in ("fds", "threads"):
        if g[k] is not None and g[k] > 2:
            out.append(f"{k} grew by {g[k]} after the warm-up")
    if report["bad_frames"]:
        out.append(f"{report['bad_frames']} bad frame(s)")
    return out


def _inputs(args) -> tuple[str, str, str]:
    export = args.export
    if export is None:
        from export.demo import cached_export
        from runtime.paths import cache_root

        export = str(cached_export("embedded", cache_root(), log=lambda m: print(m, file=sys.stderr)))
    video, prompt = args.video, args.prompt
    if video is None:
        from runtime.paths import cache_root
        from tpo_core.data.sample import sample_video

        path, phrase = sample_video(cache_root() / "sample")
        video, prompt = str(path), prompt.replace("{obj}", phrase)
    return export, video, prompt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=None)
    ap.add_argument("--video", default=None)
    ap.add_argument("--prompt", default="Track {obj}.")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--cadence", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sync", action="store_true", help="re-ask on the frame itself (default: background)")
    ap.add_argument("--sample-every", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if sys.path[0] != str(REPO):
        sys.path.insert(0, str(REPO))
    export, video, prompt = _inputs(args)
    cmd = [sys.executable, "-m", "runtime.cli", "stream", export, "--source", video, "--prompt", prompt, "--loop",
           "0", "--cadence", str(args.cadence), "--device", args.device, "--json"]
    cmd += ["--sync"] if args.sync else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    print("running:", " ".join(cmd), file=sys.stderr)
    report = soak(cmd, args.minutes * 60, args.sample_every, args.warmup, env={**os.environ, "PYTHONPATH": str(REPO)})
    problems = verdict(report, args.max_rss_growth_mb)
    dev = args.device
    if dev.startswith("cuda"):
        import torch

        dev = torch.cuda.get_device_name(torch.device(dev))
    report = {"device": dev, "host": platform.node(), "export": export, "video": video, "prompt": prompt,
              "cadence": args.cadence, "background": not args.sync, "problems": problems, **report,
              "command": "python scripts/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    g = report["growth_after_warmup"]
    print(f"{report['frames']} frames in {report['seconds']} s ({report['fps']} fps), {report['answers']} answers; "
          f"after the warm-up RSS {g['rss_mb']:+} MB, fds {g['fds']:+}, threads {g['threads']:+}; latency p50 "
          f"{report['latency_ms']['p50']:.1f} ms, p99 {report['latency_ms']['p99']:.1f} ms")
    for p in problems:
        print("PROBLEM:", p)
    if args.out:
        from runtime.report import write_result

        print(f"wrote {write_result(args.out, 'soak', dev, report)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
