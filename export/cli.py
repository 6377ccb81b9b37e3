"""``tpo export``, ``tpo verify``, ``tpo build`` and ``tpo demo`` (registered on the ``tpo`` umbrella, ``runtime.cli``,
through ``add_parsers``).

    tpo export --checkpoint DIR|embedded|untrained-tiny --out DIR [--precision fp32|fp16|bf16|int8|int4] [--opset N]
               [--llm-graph plain|gqa] [--llm-target cuda|cpu]
    tpo verify DIR [--checkpoint DIR] [--videos N] [--device cpu|cuda] [--json]
    tpo build DIR [--builder auto|tensorrt|tensorrt-rtx] ...      (export/trt_build.py)
"""

from __future__ import annotations

import argparse
import json


def _add_export(sub) -> None:
    from export import DEFAULT_OPSET, EXPORTERS, LLM_GRAPHS

    p = sub.add_parser("export", help="split a TPO model into ONNX graphs + manifest.json",
                       description="Write one ONNX graph per component (vision, llm, heads, mask graphs), the "
                                   "embedding/task tensors, tokenizer.json and manifest.json into --out.")
    p.add_argument("--checkpoint", default="embedded",
                   help="checkpoint folder, 'embedded' (the shipped default model) or 'untrained-tiny'")
    p.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8", "int4"), default="fp32",
                   help="weights/activations/KV type of the graphs (logits stay float32); int8/int4: weight-only "
                        "quantized LLM (MatMulNBits, needs --llm-graph gqa), the rest in float16 (float32 with "
                        "--llm-target cpu)")
    p.add_argument("--llm-graph", choices=LLM_GRAPHS, default="plain",
                   help="plain: past/present LLM graph (any provider, TensorRT); gqa: ONNX Runtime GenAI builder graph "
                        "(GroupQueryAttention on one shared KV buffer, CUDA graphs; fp32 runs on the CPU provider, "
                        "fp16/bf16/int4/int8 on CUDA) driven by runtime/engines/ort_llm.py")
    p.add_argument("--llm-target", choices=("cuda", "cpu"), default=None,
                   help="gqa: the provider the LLM graph is built for (default: cpu for fp32, cuda otherwise)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--components", nargs="+", default=None,
                   help="only these components (a partial export, for measurements)")
    p.add_argument("--max-batch", type=int, default=1, help="profile max for the batch dim (default 1)")
    p.add_argument("--max-objects", type=int, default=4, help="profile max for mask objects (default 4)")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="dynamo (default; torch.export, external data over 2 GB) or torchscript (the tracer: "
                        "~20x faster on the tiny model; what `tpo demo` uses)")
    p.add_argument("--verify", action="store_true", help="run `tpo verify` on the result")
    p.set_defaults(func=run_export)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check an export folder against the PyTorch reference (ONNX Runtime)",
                       description="Every graph on its runtime engine vs the PyTorch model on random inputs per "
                                   "profile and on real frames, then the runtime Pipeline vs TPOModel.generate "
                                   "end to end. Exits 1 if anything is out of tolerance.")
    p.add_argument("dir", help="export folder holding manifest.json")
    p.add_argument("--checkpoint", default=None, help="reference checkpoint (default: the manifest's source)")
    p.add_argument("--videos", type=int, default=2, help="generated videos for real-frame and end-to-end checks")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the runtime's ONNX Runtime engines run "
                   "(cuda for bf16 exports)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end generation check")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run_verify)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="fresh-install demo: sample video, export (cached), 4 task requests on CPU",
                       description="Generates a sample video, exports the embedded default model (cached under "
                                   "~/.cache/tpo-edge keyed by the checkpoint and code hash), runs a QA, a grounding, "
                                   "a temporal and a segmentation request through the runtime on the CPU, prints the "
                                   "answers and writes an annotated video.")
    p.add_argument("--checkpoint", default="embedded", help="'embedded' (default), 'untrained-tiny' or a folder")
    p.add_argument("--out", default="tpo-demo", help="folder for results.json and annotated.mp4")
    p.add_argument("--force-routing", choices=("auto", "on", "off"), default="auto",
                   help="force each task's *_begin token (auto: only for the untrained fallback model)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo

    return run_demo(args)


def run_export(args: argparse.Namespace) -> int:
    from export.exporter import export_model
    from tpo_core.export_specs import ExportLimits

    manifest = export_model(args.checkpoint, args.out, precision=args.precision, opset=args.opset,
                            components=args.components, exporter=args.exporter, llm_graph=args.llm_graph,
                            llm_target=args.llm_target,
                            limits=ExportLimits(max_batch=args.max_batch, max_objects=args.max_objects))
    print(json.dumps({"out": str(args.out), "components": list(manifest.components), "precision": args.precision,
                      "opset": args.opset, "exporter": args.exporter, "llm_graph": args.llm_graph}))
    if args.verify:
        from export.verify import verify_export

        report = verify_export(args.out)
        print(report.summary())
        return 0 if report.ok else 1
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from export.verify import run_verify as run

    return run(args)


def add_parsers(subparsers) -> None:
    """Register ``export``, ``verify``, ``build`` and ``demo``."""
    from export.trt_build import add_build_parser

    _add_export(subparsers)
    _add_verify(subparsers)
    add_build_parser(subparsers)
    _add_demo(subparsers)
