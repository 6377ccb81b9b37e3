"""Where a decoded token's time goes: CUDA kernel time per kernel class, ours against ONNX Runtime GenAI, one process.

    python benchmarks/llm_profile.py --work /tmp/llm_peers [--prompt 1024] [--steps 32] [--out DIR]

Needs the builds of ``benchmarks/llm_peers.py --phase weights build`` under ``--work`` (``tpo_fp16`` and
``ort_genai_fp16``; the other peers when named with ``--peers``) and a CUDA device. For each peer: a prefill of
``--prompt`` random tokens, ``--warmup`` decode steps, then ``--steps`` decode steps under ``torch.profiler`` with
CUDA activity only. CUPTI records every kernel launched in the process, whoever launched it (ONNX Runtime's kernels
included), so both peers are profiled the same way. Ours runs without CUDA graphs here (a replayed graph is one
launch, so the per-step wall time then is the kernels' time plus launch gaps); its graph-replay wall time is
measured right after, outside the profiler.

Per peer and per decode step: wall ms (host clock between device syncs), kernel ms (sum of kernel durations:
the device's busy time, as kernels of one stream do not overlap), kernel launches, and kernel ms per class
(``matmul`` GEMV/GEMM and MatMulNBits, ``attention``, ``norm``, ``rotary``, ``argmax``, ``copy`` memcpy/memset,
``other``), plus the ``matmul`` class's achieved bandwidth: the weight bytes read per token (``llm_peers.floor_bytes``
without the KV cache) over its time, against the copy bandwidth measured in the same run. Writes
``llm_profile_<gpu>.json`` (and the top kernels of each peer) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,I001  (before onnxruntime: it loads the CUDA libraries onnxruntime-gpu links against)
import numpy as np  # noqa: E402

CLASSES = (  # first match wins; kernel names are matched lower-case
    ("attention", r"attention|flash|fmha|mha|gqa|softmax|decoder_masked|unfused|attn"),
    ("rotary", r"rotary|rope"),
    ("norm", r"layernorm|layer_norm|rmsnorm|skip.*norm|norm"),
    ("matmul", r"gemv|gemm|matmul|cutlass|sm90_xmma|sm80_xmma|xmma|cublas|nbits|dequant|splitk|nvjet"),
    ("argmax", r"argmax|reduce|cub::|topk"),
)


def classify(name: str) -> str:
    """Kernel name -> class (``CLASSES``; memcpy/memset -> ``copy``; anything else -> ``other``)."""
    low = name.lower()
    if low.startswith(("memcpy", "memset")):
        return "copy"
    for cls, pattern in CLASSES:
        if re.search(pattern, low):
            return cls
    return "other"


def summarize_trace(trace: dict, steps: int) -> dict:
    """A chrome trace (``torch.profiler`` ``export_chrome_trace``) -> per-step kernel ms, launches, ms per class,
    and the 12 longest kernels (total ms per step, calls per step)."""
    per_class: dict[str, float] = {}
    per_kernel: dict[str, list[float]] = {}
    total_us, launches = 0.0, 0
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or ev.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        dur = float(ev.get("dur", 0.0))
        name = ev.get("name", "?") if ev["cat"] == "kernel" else ev["cat"].replace("gpu_", "")
        total_us += dur
        launches += ev["cat"] == "kernel"
        cls = classify(name)
        per_class[cls] = per_class.get(cls, 0.0) + dur
        per_kernel.setdefault(name, []).append(dur)
    top = sorted(per_kernel.items(), key=lambda kv: -sum(kv[1]))[:12]
    return {"kernel_ms": total_us / 1e3 / steps, "launches": launches / steps,
            "class_ms": {k: v / 1e3 / steps for k, v in sorted(per_class.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n[:160], "ms": sum(d) / 1e3 / steps, "calls": len(d) / steps} for n, d in top]}


def profiled(step, steps: int) -> tuple[dict, list[float]]:
    """Run ``step`` ``steps`` times under the CUDA profiler -> (trace summary, wall ms per step)."""
    from torch.profiler import ProfilerActivity, profile

    walls = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return summarize_trace(trace, steps), walls


def tpo_peer(path: Path, table: torch.Tensor, ids: np.ndarray, args) -> dict:
    from runtime.engines.ort_llm import OrtLLM

    cap = len(ids) + 2 * (args.warmup + args.steps) + 4
    out = {}
    for graph in (False, True):
        llm = OrtLLM(path, cap, "cuda", cuda_graph=graph)
        state = {"tok": llm.append(table[torch.from_numpy(ids).cuda()][None])[2]}

        def step(llm=llm, state=state):
            state["tok"] = llm.append(table[state["tok"]].reshape(1, 1, -1))[2]

        for _ in range(args.warmup):
            step()
        if graph:  # the shipped path: wall time only (one graph launch per step)
            walls = []
            for _ in range(args.steps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                walls.append((time.perf_counter() - t0) * 1e3)
            out["cuda_graph_wall_ms"] = float(np.median(walls))
        else:
            summary, walls = profiled(step, args.steps)
            out.update(summary, wall_ms=float(np.median(walls)))
        llm.close()
        del llm
        torch.cuda.empty_cache()
    return out


def genai_peer(folder: Path, ids: np.ndarray, args) -> dict:
    import onnxruntime_genai as og

    model = og.Model(og.Config(str(folder)))
    length = len(ids) + args.warmup + args.steps + 4
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids[None].astype(np.int32))
    gen.generate_next_token()
    for _ in range(args.warmup):
        gen.generate_next_token()
    summary, walls = profiled(gen.generate_next_token, args.steps)
    del gen, model
    torch.cuda.empty_cache()
    return {**summary, "wall_ms": float(np.median(walls))}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.llm_peers import copy_bandwidth, floor_bytes, gpu_name, llm_config, random_model, versions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/llm_peers", help="llm_peers' work folder (weights and builds)")
    p.add_argument("--peers", nargs="+", default=["tpo_fp16", "ort_genai_fp16"],
                   choices=("tpo_fp16", "tpo_int4", "ort_genai_fp16", "ort_genai_int4"))
    p.add_argument("--preset", default="videochat-tpo-7b")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("llm_profile needs a CUDA device (it profiles CUDA kernels); torch sees none")
    work = Path(args.work)
    for peer in args.peers:
        if not (work / peer / "built.json").is_file():
            raise SystemExit(f"{peer} is not built in {work}: run benchmarks/llm_peers.py --phase weights build first")
    cfg = llm_config(args.preset, args.layers)
    ids = np.random.default_rng(args.seed).integers(3, cfg.vocab_size, args.prompt).astype(np.int64)
    bw = copy_bandwidth("cuda")
    weight_bytes = floor_bytes(cfg, 0)
    lm = random_model(args.preset, args.layers, args.seed)
    table = lm.get_input_embeddings().weight.detach().to(torch.float16).cuda()
    del lm
    runs = {}
    for peer in args.peers:
        runs[peer] = tpo_peer(work / peer / "llm.onnx", table, ids, args) if peer.startswith("tpo") else \
            genai_peer(work / peer, ids, args)
        r = runs[peer]
        mm = r["class_ms"].get("matmul", 0.0)
        r["matmul_GBps"] = weight_bytes / (mm / 1e3) / 1e9 if mm else None
        print(f"[llm_profile] {peer}: wall {r['wall_ms']:.3f} ms/token (profiled), kernels {r['kernel_ms']:.3f} ms, "
              f"{r['launches']:.0f} launches; " + ", ".join(f"{k} {v:.3f}" for k, v in r["class_ms"].items())
              + (f"; graph replay {r['cuda_graph_wall_ms']:.3f} ms" if "cuda_graph_wall_ms" in r else ""), flush=True)
        if r["matmul_GBps"]:
            print(f"[llm_profile] {peer}: matmul reads {weight_bytes / 1e9:.2f} GB at {r['matmul_GBps']:.0f} GB/s "
                  f"({r['matmul_GBps'] / bw:.2f} of the {bw:.0f} GB/s copy bandwidth)", flush=True)
    rec = {"gpu": gpu_name("cuda"), "layers": cfg.num_hidden_layers, "prompt_tokens": args.prompt,
           "copy_bw_GBps": bw, "weight_bytes": weight_bytes, "floor_ms_weights_only": weight_bytes / bw / 1e6,
           "runs": runs, "versions": versions(),
           "command": "python benchmarks/llm_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    from runtime.report import write_result

    print(f"[llm_profile] wrote {write_result(Path(args.out), 'llm_profile', rec['gpu'], rec)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
