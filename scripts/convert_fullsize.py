"""The whole real-user path on a synthetic VideoChat-TPO release: make it, convert, export, verify, run.

Each phase is one command (at most 10 minutes each on the GPU machine); state lives in ``--state`` (default
/tmp/tpo_fullsize) between back-to-back commands, and every phase appends its wall time, peak RSS (the
child's ``ru_maxrss``), exit code and output tail to ``STATE/results.json``, copied to ``$OUT/convert_fullsize.json``.

    python scripts/convert_fullsize.py synth     # 16.2 GB synthetic release          (H200 host: ~2-4 min EST)
    python scripts/convert_fullsize.py convert   # tpo convert (bf16, LoRA unmerged)  (~2-4 min EST, disk-bound)
    python scripts/convert_fullsize.py export    # tpo export --precision fp16        (~6-8 min EST)
    python scripts/convert_fullsize.py verify    # tpo verify --no-e2e                (~3-6 min EST)
    python scripts/convert_fullsize.py run       # tpo run --device cuda              (~1-2 min EST)
    python scripts/convert_fullsize.py report    # print results.json; add --clean to free the disk
    python scripts/convert_fullsize.py all       # synth .. run in one process (e.g. in the background)

``--size small`` runs the same phases on the small synthetic variant (seconds; what the tests use). Disk at full
size: release 16.2 GB + checkpoint 16.2 GB + extras 0.05 GB + fp16 export ~16 GB = ~49 GB (the GPU machine has
64 GB): ``export`` deletes the release first unless ``--keep-release``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "videochat_tpo"
PHASES = ("synth", "convert", "export", "verify", "run", "report", "all")
CHAIN = ("synth", "convert", "export", "verify", "run")  # what `all` runs, stopping at the first failure
PROMPTS = ("Describe the video.", "Where is the red circle?", "Track the red circle.")


def _paths(state: Path) -> dict[str, Path]:
    return {"release": state / "release", "ckpt": state / "ckpt", "export": state / "export",
            "results": state / "results.json", "config": state / "small_config.json", "sample": state / "sample"}


def _record(state: Path, phase: str, entry: dict) -> None:
    p = _paths(state)["results"]
    data = json.loads(p.read_text()) if p.is_file() else {"phases": {}}
    data["phases"][phase] = entry
    data["bytes"] = {k: _du(v) for k, v in _paths(state).items() if k in ("release", "ckpt", "export")}
    p.write_text(json.dumps(data, indent=1) + "\n")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, Path(out) / "convert_fullsize.json")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _timed(cmd: list[str], state: Path, phase: str, extra: dict | None = None) -> int:
    """Run ``cmd`` as a child; record seconds, the child's peak RSS and the tail of its output."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    entry = {"cmd": cmd, "rc": rc, "seconds": round(time.perf_counter() - t0, 2),
             "peak_rss_bytes": usage.ru_maxrss * 1024, "output_tail": "".join(lines[-30:])[-4000:], **(extra or {})}
    _record(state, phase, entry)
    print(f"== {phase}: rc {rc}, {entry['seconds']} s, peak RSS {entry['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    return rc


def _synth_child(state: Path, size: str) -> int:
    """(child process) write the synthetic release."""
    sys.path.insert(0, str(ROOT))
    from tpo_core.convert.layout import ReleaseDims
    from tpo_core.convert.synthetic import small_config, small_dims, write_synthetic_release

    p = _paths(state)
    shutil.rmtree(p["release"], ignore_errors=True)
    if size == "small":
        small_config().to_json(p["config"])
        write_synthetic_release(p["release"], FIXTURES, small_dims(), small_config(), seed=0, log=print)
    else:
        write_synthetic_release(p["release"], FIXTURES, ReleaseDims.official(), None, seed=0, log=print)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=PHASES + ("_synth",))
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--state", default="/tmp/tpo_fullsize", help="folder kept between phases")
    ap.add_argument("--device", default="cuda", help="device of `tpo run` (cuda needs onnxruntime-gpu)")
    ap.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"))
    ap.add_argument("--llm-graph", default="plain", choices=("plain", "gqa"), help="`tpo export --llm-graph`")
    ap.add_argument("--keep-release", action="store_true", help="keep the synthetic release after converting")
    ap.add_argument("--e2e", action="store_true", help="`tpo verify` with its end-to-end generation check")
    ap.add_argument("--clean", action="store_true", help="with report: delete the state folder's large files")
    args = ap.parse_args(argv)
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    p = _paths(state)
    py, tpo = sys.executable, [sys.executable, "-m", "runtime.cli"]
    if args.phase == "_synth":
        return _synth_child(state, args.size)
    if args.phase == "all":
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "all"]
        for phase in CHAIN:
            rc = main([phase, *rest])
            if rc:
                return rc
        return 0
    if args.phase == "synth":
        return _timed([py, str(Path(__file__).resolve()), "_synth", "--size", args.size, "--state", str(state)],
                      state, "synth", {"size": args.size})
    if args.phase == "convert":
        shutil.rmtree(p["ckpt"], ignore_errors=True)
        cmd = tpo + ["convert", "--from", "videochat-tpo", str(p["release"]), "--out", str(p["ckpt"]), "--json"]
        cmd += ["--config", str(p["config"])] if args.size == "small" else []
        return _timed(cmd, state, "convert", {"release_bytes": _du(p["release"])})
    if args.phase == "export":
        if not args.keep_release and args.size == "full":
            shutil.rmtree(p["release"], ignore_errors=True)  # disk: release + checkpoint + export > 64 GB
        shutil.rmtree(p["export"], ignore_errors=True)
        return _timed(tpo + ["export", "--checkpoint", str(p["ckpt"]), "--out", str(p["export"]), "--precision",
                             "fp16", "--exporter", args.exporter, "--llm-graph", args.llm_graph], state, "export")
    if args.phase == "verify":
        cmd = tpo + ["verify", str(p["export"]), "--json", "--videos", "1", "--device", args.device]
        cmd += [] if args.e2e else ["--no-e2e"]
        return _timed(cmd, state, "verify")
    if args.phase == "run":
        sys.path.insert(0, str(ROOT))
        from tpo_core.data.sample import sample_video

        video, phrase = sample_video(p["sample"])
        cmd = tpo + ["run", str(p["export"]), "--device", args.device, "--video", str(video), "--json"]
        for q in PROMPTS:
            cmd += ["--prompt", q.replace("the red circle", phrase)]
        return _timed(cmd, state, "run")
    print(p["results"].read_text() if p["results"].is_file() else "no results yet")
    if args.clean:
        for key in ("release", "ckpt", "export"):
            shutil.rmtree(p[key], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
