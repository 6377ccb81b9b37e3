"""Export the VideoChat-TPO 7B shapes (random weights) and measure time, size and peak RSS.

One command on the GPU machine (128 GB RAM; the export itself runs on the CPU)::

    python scripts/export_7b.py --precision fp16 --components vision llm --check

writes ``$OUT/export_7b_report.json`` (``$OUT`` or ``--report-dir``; the graphs go to ``--work`` and are deleted
unless ``--keep``: 15 GB do not belong in a report folder). The model is built on the ``meta`` device and
materialized once, directly in the export precision (``to_empty`` + in-place random init), so the weights are
never held twice; the exporter's wrappers share them and the dynamo exporter streams them into the external
data file. ``--check`` runs the exported LLM graph in ONNX Runtime (CPU) on a short prompt with a cache and
compares it with the same wrapper in PyTorch; ``--layers N`` shrinks the LLM for a quick dry run.

The report holds, per phase (build, materialize, each component, check), seconds and peak RSS (ru_maxrss),
file sizes, weight bytes and the ratio peak RSS / weight bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.exporter import export_component, fill_random, peak_rss_mb, restore_buffers  # noqa: E402
from export.specs import check_precision  # noqa: E402
from tpo_core.config import get_preset  # noqa: E402
from tpo_core.export_specs import component_io  # noqa: E402

PARTS = {"vision": ("vision", "connector"), "llm": ("llm",), "head_region": ("region_head",),
         "head_temporal": ("temporal_head",), "loc_encoder": ("llm",)}


def build_random(preset: str, dtype: torch.dtype, layers: int | None, components, seed: int = 0):
    """TPOModel with random weights in ``dtype``: built on ``meta``; only the parts the ``components`` need are
    materialized (``to_empty`` + in-place init), once, directly in ``dtype``."""
    from tpo_core.model import TPOModel

    cfg = get_preset(preset)
    if layers:
        cfg.llm.num_layers = layers
    with torch.device("meta"):
        model = TPOModel(cfg, tokenizer=None)
    model = model.to(dtype)
    parts = sorted({p for c in components for p in PARTS.get(c, ("mask_head",))})
    gen = torch.Generator().manual_seed(seed)
    for part in parts:
        module = getattr(model, part).to_empty(device="cpu")
        setattr(model, part, module)
        fill_random(module, gen, _fill_chunked)
    restore_buffers(model, force=True, allow_meta=True)
    return model.eval(), parts


def _fill_chunked(p: torch.Tensor, gen: torch.Generator, block: int = 1 << 22) -> None:
    """Fill a parameter with a tiled random block (normal * 0.02): memcpy speed, no full-size temporary.

    Values only need to be finite and non-degenerate for export measurements; drawing 7e9 normals would take
    minutes on the CPU.
    """
    flat = p.view(-1)
    tile = torch.randn(min(block, flat.numel()), generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype)
    for i in range(0, flat.numel(), tile.numel()):
        n = min(tile.numel(), flat.numel() - i)
        flat[i:i + n].copy_(tile[:n])


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def check_llm(model, folder: Path, precision: str) -> dict:
    """ORT (CPU) vs the PyTorch LLMGraph on 6 prompt tokens + 1 decode step (same dtype on both sides)."""
    import onnxruntime as ort

    from export.llm_graph import LLMGraph, empty_past

    cfg = model.config.llm
    dtype = check_precision(precision)
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(folder / "llm.onnx"), providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    graph = LLMGraph(model.llm.lm).eval()
    x = (torch.randn(1, 7, cfg.hidden_size) * 0.02).to(dtype)
    past = empty_past(cfg.num_layers, 1, cfg.num_kv_heads, cfg.head_dim, dtype)
    names = [i.name for i in sess.get_inputs()][3:]
    errs, t0 = {}, time.perf_counter()
    with torch.no_grad():
        for start, end in ((0, 6), (6, 7)):
            feeds = {"inputs_embeds": x[:, start:end].numpy(), "position_ids": np.arange(start, end)[None],
                     "attention_mask": np.ones((1, end), np.int64), **{n: p.numpy() for n, p in zip(names, past)}}
            got = sess.run(None, feeds)
            ref = graph(x[:, start:end], torch.arange(start, end)[None], torch.ones(1, end, dtype=torch.long), past)
            errs[f"logits_{start}"] = float(np.abs(got[0] - ref[0].float().numpy()).max())
            errs[f"hidden_{start}"] = float(np.abs(got[1].astype(np.float32) - ref[1].float().numpy()).max())
            past = [torch.from_numpy(a) for a in got[2:]]
    return {"ort_load_s": load_s, "run_s": time.perf_counter() - t0, "max_abs": errs, "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="videochat-tpo-7b")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("--components", nargs="+", default=["vision", "llm"])
    p.add_argument("--layers", type=int, default=None, help="LLM layers (default: the preset's 32)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--work", default="/tmp/tpo_export_7b", help="where the graphs are written")
    p.add_argument("--report-dir", default=os.environ.get("OUT", "."), help="report folder (default $OUT)")
    p.add_argument("--check", action="store_true", help="run the LLM graph in ONNX Runtime and compare")
    p.add_argument("--keep", action="store_true", help="keep the exported graphs in --work")
    p.add_argument("--check-budget-s", type=float, default=360.0,
                   help="skip --check when the export took longer than this (keeps one command under 10 min)")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    dtype = check_precision(args.precision)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    report: dict = {"preset": args.preset, "precision": args.precision, "components": {}, "opset": args.opset,
                    "layers": args.layers, "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__}
    log = print
    t0 = time.perf_counter()
    model, parts = build_random(args.preset, dtype, args.layers, args.components)
    report["materialized"] = parts
    report["materialize_s"] = time.perf_counter() - t0
    report["peak_rss_after_build_mb"] = peak_rss_mb()
    report["weight_bytes"] = {"materialized": sum(weight_bytes(getattr(model, p)) for p in parts),
                              "llm": weight_bytes(model.llm),
                              "vision+connector": weight_bytes(model.vision) + weight_bytes(model.connector)}
    log(f"[export_7b] built {report['weight_bytes']['materialized'] / 1e9:.2f} GB of {args.precision} weights in "
        f"{report['materialize_s']:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    ios = component_io(model.config)
    for name in args.components:
        rec = export_component(model, ios[name], work, args.precision, args.opset, log)
        report["components"][name] = rec
    if args.check and "llm" in args.components and time.perf_counter() - t0 > args.check_budget_s:
        report["check_llm"] = f"skipped: export took {time.perf_counter() - t0:.0f}s > --check-budget-s"
    elif args.check and "llm" in args.components:
        report["check_llm"] = check_llm(model, work, args.precision)
        log(f"[export_7b] ORT check: {report['check_llm']['max_abs']}")
    if "llm" in report["components"]:
        report["llm_files"] = {f.name: f.stat().st_size for f in work.glob("llm.onnx*")}
    report["total_s"] = time.perf_counter() - t0
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_rss_over_weights"] = report["peak_rss_mb"] * 2**20 / max(1, report["weight_bytes"]["materialized"])
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "export_7b_report.json" if not args.layers else f"export_7b_L{args.layers}_report.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps({k: v for k, v in report.items() if k != "components"}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
