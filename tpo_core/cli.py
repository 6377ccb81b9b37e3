"""The model side's subcommands (``ask``, ``info``, ``data synth``, ``train``, ``eval``), registered on the ``tpo``
umbrella (``runtime.cli``) through ``add_parsers``. Each subcommand's heavy imports happen only when it runs."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.commands import add_box_argument, parse_boxes


def _add_ask(sub) -> None:
    p = sub.add_parser("ask", help="answer a prompt about a video with the reference (PyTorch) model",
                       description="Run TPOModel.generate on one video: text, plus boxes (pixels), spans "
                                   "(seconds) and per-frame masks when the model routes to a head.")
    p.add_argument("--checkpoint", default="embedded",
                   help="checkpoint folder, 'embedded' (the shipped default model) or 'untrained-tiny'")
    p.add_argument("--video", help="video file; omit with --sample to generate a sample video")
    p.add_argument("--prompt", action="append", help="the question (repeat for several)")
    p.add_argument("--sample", action="store_true", help="generate a sample video and ask one question per task")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print results as JSON")
    add_box_argument(p)
    p.set_defaults(func=run_ask)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a preset's or checkpoint's shapes and parameter breakdown")
    p.add_argument("--preset", default="tiny", help="tiny or videochat-tpo-7b (built on the meta device)")
    p.add_argument("--checkpoint", help="a checkpoint folder instead of a preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)


def run_ask(args) -> int:
    from runtime.contract.postprocess import boxes_to_normalized
    from runtime.paths import cache_root

    from .data.sample import SAMPLE_PROMPTS, sample_video
    from .data.video import read_video
    from .model import load_model

    boxes = parse_boxes(args)
    model = load_model(args.checkpoint)
    if args.video:
        video, prompts = Path(args.video), args.prompt or []
        if not prompts:
            raise SystemExit("tpo ask: give --prompt \"...\" (or use --sample)")
    elif args.sample:
        video, phrase = sample_video(cache_root() / "sample")
        prompts = args.prompt or [p.format(obj=phrase) for p in SAMPLE_PROMPTS]
    else:
        raise SystemExit("tpo ask: give --video PATH --prompt \"...\", or --sample")
    clip = read_video(video, model.config.vision.num_frames)
    track_boxes = None if boxes is None else boxes_to_normalized(boxes, clip.width, clip.height)
    results = []
    for prompt in prompts:
        res = model.generate(clip, prompt, max_new_tokens=args.max_new_tokens, do_sample=args.top_p is not None,
                             top_p=args.top_p or 0.9, temperature=args.temperature, seed=args.seed,
                             track_boxes=track_boxes)
        results.append({"prompt": prompt, **res.to_dict()})
    if args.json:
        print(json.dumps({"video": str(video), "results": results}, indent=2))
    else:
        print(f"video: {video} ({clip.width}x{clip.height}, {clip.duration:.1f} s)")
        for r in results:
            print(f"\nQ: {r['prompt']}\nA: {r['text']!r}  tasks={r['tasks']}")
            if r["region"]:
                print(f"   box (px): {r['region']['box']}")
            if r["temporal"]:
                best = r["temporal"]["spans"][0]
                print(f"   span: {best['start']:.1f}-{best['end']:.1f} s (score {best['score']:.2f})")
            if r["mask"]:
                print(f"   masks: {r['mask']['num_frames']} frames, areas {r['mask']['areas']}")
                if not all(r["mask"]["present"]):
                    print(f"   object not found on sampled frame(s) "
                          f"{[k for k, p in enumerate(r['mask']['present']) if not p]} (mask object score <= 0)")
            for note in r.get("notes", []):
                print(f"   note: {note}")
    return 0


def run_info(args) -> int:
    import torch

    from .config import get_preset
    from .model import TPOModel, parameter_breakdown

    if args.checkpoint:
        model = TPOModel.from_pretrained(args.checkpoint)
    else:
        with torch.device("meta"):
            model = TPOModel(get_preset(args.preset))
            if model.config.preset == "videochat-tpo-7b":
                model.llm.apply_lora()
    info = {"preset": model.config.preset, "parameters": parameter_breakdown(model)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"preset {info['preset']}")
        for k, v in info["parameters"].items():
            print(f"  {k:16s} {v:>15,d}")
    return 0


def add_parsers(sub) -> None:
    """Register ``ask``, ``info``, ``data synth``, ``train``, ``eval`` and ``convert`` on the ``tpo`` subparsers."""
    from .convert.cli import add_parsers as add_convert
    from .data.synth import add_synth_parser
    from .train.cli import add_parsers as add_train

    _add_ask(sub)
    _add_info(sub)
    add_synth_parser(sub)
    add_train(sub)
    add_convert(sub)
