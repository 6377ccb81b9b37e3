"""The ``tpo`` command line. Each subcommand's heavy imports happen only when it runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__

EMBEDDED_DEFAULT = Path(__file__).parent / "assets" / "default"
SAMPLE_PROMPTS = ("What colour is the background?", "Where is {obj}?", "When does {obj} appear?", "Track {obj}.")


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
    p.set_defaults(func=run_ask)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a preset's or checkpoint's shapes and parameter breakdown")
    p.add_argument("--preset", default="tiny", help="tiny or videochat-tpo-7b (built on the meta device)")
    p.add_argument("--checkpoint", help="a checkpoint folder instead of a preset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_info)


def load_model(spec: str):
    """'embedded', 'untrained-tiny' or a folder -> TPOModel in eval mode on the CPU."""
    from .config import get_preset
    from .model import TPOModel

    if spec == "untrained-tiny" or (spec == "embedded" and not (EMBEDDED_DEFAULT / "model.safetensors").is_file()):
        if spec == "embedded":
            print("note: no trained embedded model is installed; using an untrained tiny model (seed 0)",
                  file=sys.stderr)
        return TPOModel.from_config(get_preset("tiny"), seed=0).eval()
    return TPOModel.from_pretrained(EMBEDDED_DEFAULT if spec == "embedded" else spec)


def sample_video(cache: Path | None = None) -> tuple[Path, str]:
    """Generate (once) a sample video with the synthetic generator; returns (path, an object phrase in it).

    ``cache`` defaults to ``~/.cache/tpo-edge/sample``; ``tpo ask --sample`` and ``tpo demo`` share it.
    """
    from .data.synth import generate, task_samples

    cache = cache or Path.home() / ".cache" / "tpo-edge" / "sample"
    if not (cache / "manifest.json").is_file():
        generate(cache, 1, 12345, "val", overwrite=True)
    samples = task_samples(cache)
    phrase = next((s.phrase for s in samples if s.phrase), "the red circle")
    if not phrase.lower().startswith(("the ", "a ", "an ")):
        phrase = "the " + phrase
    return Path(samples[0].video), phrase


def run_ask(args) -> int:
    from .data.video import read_video

    model = load_model(args.checkpoint)
    if args.video:
        video, prompts = Path(args.video), args.prompt or []
        if not prompts:
            raise SystemExit("tpo ask: give --prompt \"...\" (or use --sample)")
    elif args.sample:
        video, phrase = sample_video()
        prompts = args.prompt or [p.format(obj=phrase) for p in SAMPLE_PROMPTS]
    else:
        raise SystemExit("tpo ask: give --video PATH --prompt \"...\", or --sample")
    clip = read_video(video, model.config.vision.num_frames)
    results = []
    for prompt in prompts:
        res = model.generate(clip, prompt, max_new_tokens=args.max_new_tokens, do_sample=args.top_p is not None,
                             top_p=args.top_p or 0.9, temperature=args.temperature, seed=args.seed)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpo", description="tpo-edge: train, export and deploy TPO video MLLMs")
    parser.add_argument("--version", action="version", version=f"tpo-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_ask(sub)
    _add_info(sub)
    data = sub.add_parser("data", help="datasets: generate synthetic videos with exact labels")
    data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    from .data.synth import add_synth_parser

    add_synth_parser(sub)  # finds the "data" parser above and adds "synth" to its subcommands
    from export.cli import add_parsers as add_export
    from runtime.cli import add_parsers as add_runtime

    from .train.cli import add_parsers as add_train

    add_train(sub)
    add_export(sub)
    add_runtime(sub)
    return parser


# optional dependency (top-level module) -> the setup.py extra that installs it
_EXTRA_OF = {**dict.fromkeys(("torch", "transformers", "peft", "safetensors", "scipy", "PIL", "sentencepiece",
                              "google", "onnx", "onnxscript"), "export"),
             "accelerate": "train", "matplotlib": "train", "triton": "gpu", "tensorrt_rtx": "trt",
             "tensorrt": "tensorrt"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:  # an optional dependency: say which extra brings it
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if e.name == "decord" and not os.environ.get("TPO_DEBUG"):
            print(f"tpo {args.command}: error: reading video files needs decord, which PyPI has no wheel of for "
                  "this machine (x86-64 only): build decord from source", file=sys.stderr)
            return 2
        if extra is None or os.environ.get("TPO_DEBUG"):
            raise
        print(f"tpo {args.command}: error: this command needs {e.name!r}, which is not installed: "
              f"`pip install 'tpo-edge[{extra}]'` (in a checkout: `pip install -e '.[{extra}]'`); the base install "
              "only runs export folders (tpo run, tpo stream, tpo bench)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:  # user-facing errors already say what is wrong and the fix
        if os.environ.get("TPO_DEBUG"):
            raise
        print(f"tpo {args.command}: error: {e}\n(set TPO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
