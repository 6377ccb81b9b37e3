"""``tpo convert --from videochat-tpo SRC --out DST`` (registered by ``add_parsers``)."""

from __future__ import annotations

import json
import sys

SOURCES = ("videochat-tpo",)


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert released weights (VideoChat-TPO) into a tpo-edge checkpoint folder",
        description="Read the sharded VideoChat-TPO release lazily, shard by shard, and write a tpo-edge checkpoint "
                    "that TPOModel.from_pretrained loads strictly; unused official tensors go verbatim to "
                    "extras.safetensors, each with its reason in convert_report.json. See docs/convert.md.")
    p.add_argument("src", help="the release folder (model.safetensors.index.json, shards, config.json, tokenizer)")
    p.add_argument("--from", dest="source_format", required=True, choices=SOURCES, help="the release's format")
    p.add_argument("--out", help="output checkpoint folder (not needed with --dry-run)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"),
                   help="dtype of the written weights (the release is bf16: bf16 and fp32 are lossless)")
    p.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the Mistral weights")
    p.add_argument("--config", help="a tpo-edge config JSON for a release with other sizes (default: the "
                                    "videochat-tpo-7b preset, checked against the release's config.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained temporal head's initialization")
    p.add_argument("--dry-run", action="store_true", help="read only the index and report what would be mapped")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from .converter import convert, dry_run

    if args.dry_run:
        result = dry_run(args.src, merge_lora=args.merge_lora)
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print(f"{result['total']} tensors: {result['mapped']} mapped, {len(result['extras'])} extras, "
                  f"{len(result['unmapped'])} unmapped")
            for name in result["unmapped"]:
                print(f"  unmapped: {name}")
        return 0 if not result["unmapped"] else 1
    if not args.out:
        raise ValueError("tpo convert: give --out DIR (or --dry-run)")
    config = None
    if args.config:
        from tpo_core.config import TPOConfig

        config = TPOConfig.from_json(args.config)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    report = convert(args.src, args.out, precision=args.precision, merge_lora=args.merge_lora, config=config,
                     seed=args.seed, log=log)
    summary = {k: report[k] for k in ("total", "mapped", "unmapped", "precision", "merge_lora", "untrained_heads",
                                      "seconds", "peak_rss_bytes", "peak_rss_over_weights")}
    summary["extras"] = len(report["extras"])
    summary["out"] = args.out
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {args.out}: {report['mapped']} of {report['total']} tensors mapped, {len(report['extras'])} kept "
              f"in extras.safetensors, {report['seconds']:.1f} s, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB")
        print(f"untrained heads: {report['untrained_heads']} (train with `tpo train --stage 2 --heads temporal`)")
    return 0
