"""``tpo run``, ``tpo stream``, ``tpo bench``: the runtime's subcommands (registered by ``add_parsers``).

They need only the runtime (numpy, onnxruntime, tokenizers, decord/av). ``tpo demo``, which also exports the
embedded model and generates a sample video, lives in ``export/demo.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


# ------------------------------------------------------------------------------------------------ run
def _add_common(p) -> None:
    p.add_argument("export_dir", metavar="DIR", help="export folder (manifest.json), written by `tpo export`")
    p.add_argument("--backend", choices=("ort", "tensorrt"), default="ort")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per engine (ORT)")


def add_box_argument(p) -> None:
    """``--box x0,y0,x1,y1`` (repeatable): box prompts in pixels of the video, one per ``<track_box>`` slot."""
    p.add_argument("--box", action="append", default=None, metavar="X0,Y0,X1,Y1",
                   help="a box prompt in pixels of the video (repeat for several): the model gets it through the "
                        "<track_box> token, placed where the question says <track_box> or else after the question")


def parse_boxes(args) -> list | None:
    from runtime.contract.postprocess import parse_box

    return None if not args.box else [parse_box(b) for b in args.box]


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="answer a prompt about a video with an exported model (the runtime)",
                       description="Pipeline.ask on one video: the answer, plus box (pixels), time span (seconds) "
                                   "and per-frame masks when the model routes to a head.")
    _add_common(p)
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--prompt", action="append", required=True, help="the question (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", default=None, help="folder for results.json and annotated.mp4 (every frame)")
    p.add_argument("--out-frames", type=int, default=None, help="write only the first N frames to annotated.mp4")
    add_box_argument(p)
    p.set_defaults(func=run_run)


def run_run(args) -> int:
    from runtime.pipeline import Pipeline
    from runtime.report import print_result, write_outputs

    boxes = parse_boxes(args)
    pipe = Pipeline.from_manifest(args.export_dir, backend=args.backend, device=args.device, threads=args.threads)
    clip = pipe.load_clip(args.video)
    results = [pipe.ask(clip, q, max_new_tokens=args.max_new_tokens, do_sample=args.top_p is not None,
                        top_p=args.top_p or 0.9, temperature=args.temperature, seed=args.seed, boxes=boxes)
               for q in args.prompt]
    if args.json:
        print(json.dumps({"video": args.video, "results": [{"prompt": q, **r.to_dict()}
                                                             for q, r in zip(args.prompt, results)]}, indent=2))
    else:
        print(f"video: {args.video} ({clip.width}x{clip.height}, {clip.duration:.1f} s)")
        for q, r in zip(args.prompt, results):
            print_result(q, r)
    if args.out:
        rpath, vpath = write_outputs(Path(args.out), args.video, clip, args.prompt, results, args.out_frames)
        print(f"wrote {rpath} and {vpath}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- stream
def _add_stream(sub) -> None:
    p = sub.add_parser("stream", help="per-frame results from a video file, camera or stream URL")
    _add_common(p)
    p.add_argument("--source", required=True, help="video file, camera index (0, 1, ...) or URL (rtsp://...)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--cadence", type=int, default=30, help="re-ask the LLM every N frames (0: only at the start)")
    p.add_argument("--window", type=int, default=32, help="recent frames the LLM sees on a re-ask")
    p.add_argument("--track-every", type=int, default=1, help="track the mask on every N-th frame")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--sync", action="store_true",
                   help="re-ask on the frame itself (frames wait for the LLM); default: re-asks run in the "
                        "background and each answer comes with the first frame after it completed")
    p.add_argument("--no-defer", action="store_true",
                   help="background re-asks launch their engine runs at once instead of in the idle time between "
                        "frames (the frame gate, docs/runtime.md); frames then share the device with them")
    p.add_argument("--stall-timeout", type=float, default=10.0,
                   help="network streams: seconds without data before the stream counts as stalled (exit 2)")
    p.add_argument("--reconnect", type=int, default=0, help="network streams: reopen a stalled URL up to N times")
    p.add_argument("--loop", type=int, default=1,
                   help="play a video file source N times in a row (0: forever; soak tests); frames keep counting")
    p.add_argument("--json", action="store_true", help="one JSON line per frame")
    add_box_argument(p)
    p.set_defaults(func=run_stream)


def _stream_line(r) -> str:
    line = f"#{r.index:6d} t={r.timestamp:8.2f}s {r.latency_ms:7.1f} ms"
    if r.error:
        line += f"  ERROR {r.error}"
    if r.object_score is not None:
        line += f"  box={list(r.box)} score={r.object_score:.2f}" if r.present else "  object not found"
    if r.answer is not None:
        line += f"  answer={r.answer.text!r} tasks={r.answer.tasks}"
    if r.answer_error is not None:
        line += f"  re-ask failed: {r.answer_error}"
    return line


def run_stream(args) -> int:
    from runtime.pipeline import Pipeline
    from runtime.sources import looped_file

    boxes = parse_boxes(args)
    pipe = Pipeline.from_manifest(args.export_dir, backend=args.backend, device=args.device, threads=args.threads)
    source = looped_file(args.source, args.loop) if args.loop != 1 else args.source
    stream = pipe.stream(source, args.prompt, cadence=args.cadence, window=args.window,
                         track_every=args.track_every, max_frames=args.max_frames,
                         max_new_tokens=args.max_new_tokens, background=not args.sync,
                         defer_reasks=not args.no_defer, stall_timeout=args.stall_timeout,
                         reconnect=args.reconnect, boxes=boxes)
    errors, answered, last = 0, 0, None
    try:
        for r in stream:
            errors += r.error is not None
            answered += r.answer is not None
            last = r.answer or last
            print(json.dumps(r.to_dict()) if args.json else _stream_line(r), flush=True)
    except KeyboardInterrupt:  # Ctrl-C: a clean stop (the source and the re-ask worker are closed)
        stream.close()
        print(f"stream stopped (Ctrl-C; {errors} bad frame(s), {answered} answer(s))", file=sys.stderr)
        return 130
    if stream.last_answer is not None and stream.last_answer is not last:
        print(f"answer completed after the last frame: {stream.last_answer.text!r} tasks={stream.last_answer.tasks}",
              file=sys.stderr)
    print(f"stream ended ({errors} bad frame(s), {answered} answer(s))", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="per-stage latency (p50/p90/p99) and peak memory of an export")
    _add_common(p)
    p.add_argument("--video", default=None, help="video file (default: random frames at --size)")
    p.add_argument("--size", default="480x640", help="HxW of the random frames (no --video)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32, help="decode steps timed per iteration")
    p.add_argument("--json", action="store_true", help="print the JSON report only")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="ORT CUDA: plain engines (default: fixed-shape components replayed from CUDA graphs)")
    p.set_defaults(func=run_bench_cli)


def run_bench_cli(args) -> int:
    from runtime.bench import print_report, run_bench

    h, w = (int(v) for v in args.size.lower().split("x"))
    report = run_bench(args.export_dir, backend=args.backend, device=args.device, threads=args.threads,
                       video=args.video, size=(h, w), iters=args.iters, warmup=args.warmup, tokens=args.tokens,
                       cuda_graphs=args.cuda_graphs)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text) if args.json else print_report(report)
    return 0


def add_parsers(subparsers) -> None:
    """Register ``run``, ``stream`` and ``bench`` on the top-level ``tpo`` subparsers."""
    _add_run(subparsers)
    _add_stream(subparsers)
    _add_bench(subparsers)
