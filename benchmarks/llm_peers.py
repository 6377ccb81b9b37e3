"""LLM decode and prefill side by side, on one GPU, from the same random weights, in one process.

Peers (batch 1, Mistral-7B dims by default: ``--preset videochat-tpo-7b``, 32 layers unless ``--layers``):

- ``tpo_fp16`` / ``tpo_int4``: ``export/llm_gqa.py`` graphs (GenAI's builder + post-processing) driven by
  ``runtime/engines/ort_llm.py`` (one shared KV buffer, IO binding, decode in a CUDA graph, device argmax; the
  embedding row is gathered on the device every step, as the runtime does);
- ``ort_genai_fp16`` / ``ort_genai_int4``: the builder's default build of the same HF folder, run through
  ``onnxruntime_genai``'s own ``Generator`` (greedy; ``min_length`` keeps EOS from ending the run);
- ``hf_eager``: transformers ``AutoModelForCausalLM`` (SDPA attention, ``DynamicCache``), greedy, no compile.

Timing: every step between device synchronizations (host clock after ``torch.cuda.synchronize``), warm-up steps
excluded, medians. Prefill: the prompt (random ids, the same for every peer) from an empty cache to the first
token, ``--iters`` times. Decode: ``--decode-steps`` single-token steps after a prefill of ``P`` tokens (context
``P`` .. ``P + steps``). Copy bandwidth: a large device-to-device copy (bytes read + written) in the same run.
Floor (fp16) = bytes read per token (every weight but the input embedding, plus the KV cache at context ``P``)
/ copy bandwidth.

Phases (each one command; state under ``--work``; at 32 layers on an H200 each phase stays under ~9.5 min)::

    python benchmarks/llm_peers.py --phase weights build --peers tpo_fp16          # random HF folder + our fp16
    python benchmarks/llm_peers.py --phase build --peers ort_genai_fp16
    python benchmarks/llm_peers.py --phase build --peers tpo_int4 ort_genai_int4
    python benchmarks/llm_peers.py --phase bench                                    # all peers, one process

CPU plumbing at a tiny size (CPU provider, the same CUDA-target graphs)::

    python benchmarks/llm_peers.py --phase all --device cpu --preset tiny --layers 2 --prompt 64 128 --work /tmp/p

Writes ``<out>/llm_peers_<gpu>.json`` (first ``--prompt``; the issue's layout), ``llm_peers_<gpu>_p<P>.json`` per
other prompt length, ``llm_peers_<gpu>_detail.json`` (samples, sizes, memory, build times) and
``llm_peers_<gpu>.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,I001  (before onnxruntime: it loads the CUDA libraries onnxruntime-gpu links against)
import numpy as np  # noqa: E402

PEERS = ("tpo_fp16", "tpo_int4", "ort_genai_fp16", "ort_genai_int4", "hf_eager")
BUILT = {"tpo_fp16": ("tpo", "fp16"), "tpo_int4": ("tpo", "int4"), "ort_genai_fp16": ("genai", "fp16"),
         "ort_genai_int4": ("genai", "int4")}


# ----------------------------------------------------------------------------------------------- weights
def llm_config(preset: str, layers: int | None):
    from tpo_core.config import get_preset
    from tpo_core.modeling.llm import mistral_config

    cfg = get_preset(preset).llm
    if layers:
        cfg.num_layers = layers
    return mistral_config(cfg)


def random_model(preset: str, layers: int | None, seed: int = 0):
    """The benchmark's random HF Mistral in float16 on the CPU (built on meta, filled in place: one copy of the
    weights). Deterministic in ``seed``: the bench phase rebuilds it instead of reading the HF folder back."""
    from transformers import MistralForCausalLM

    cfg = llm_config(preset, layers)
    with torch.device("meta"):
        lm = MistralForCausalLM(cfg)
    lm = lm.to(torch.float16).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    tile = (torch.randn(1 << 24, generator=gen) * 0.02).to(torch.float16)  # tiled: memcpy speed, never zeros
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            flat, off = p.view(-1), int(torch.randint(0, 1 << 20, (1,), generator=gen))
            for i in range(0, flat.numel(), tile.numel() - off):
                n = min(tile.numel() - off, flat.numel() - i)
                flat[i:i + n].copy_(tile[off:off + n])
    with torch.device("cpu"):  # non-persistent buffers are left uninitialized by to_empty
        lm.model.rotary_emb = type(lm.model.rotary_emb)(config=cfg)
    return lm.eval()


def make_weights(folder: Path, preset: str, layers: int | None, seed: int = 0) -> dict:
    """The random model as a HF folder (safetensors, float16) + a minimal tokenizer: every builder's input."""
    from export.llm_gqa import write_tokenizer

    t0 = time.perf_counter()
    lm = random_model(preset, layers, seed)
    lm.save_pretrained(str(folder), safe_serialization=True)
    write_tokenizer(folder)
    return {"seconds": time.perf_counter() - t0, "params": sum(p.numel() for p in lm.parameters())}


# ----------------------------------------------------------------------------------------------- builds
def build_peer(peer: str, hf: Path, work: Path) -> dict:
    """One builder run (a subprocess) into ``work/peer``; returns its record (also written to built.json)."""
    from export.llm_gqa import build_from_hf, graph_bytes, run_builder

    kind, precision = BUILT[peer]
    out = work / peer
    if kind == "tpo":
        info = build_from_hf(hf, out, precision, target="cuda", name="llm")
        rec = {"seconds": info["builder"]["seconds"], "file": info["file"]}
    else:
        rec = run_builder(hf, out, precision, "cuda", tpo_options=False)
        rec = {"seconds": rec["seconds"], "file": "model.onnx"}
    rec["bytes"] = graph_bytes(out / rec["file"])
    (out / "built.json").write_text(json.dumps(rec) + "\n")
    print(f"[llm_peers] built {peer}: {rec['bytes'] / 1e9:.2f} GB in {rec['seconds']:.0f}s", flush=True)
    return rec


def build_all(peers: list[str], work: Path, jobs: int) -> None:
    """Builder runs for ``peers`` (``jobs`` at once), then each of ours references the weights file of ORT GenAI's
    build of the same precision when there is one (hard link; every byte compared first): on disk once."""
    from concurrent.futures import ThreadPoolExecutor

    from export.llm_gqa import share_external_data

    hf = work / "hf"
    if not (hf / "config.json").is_file():
        raise SystemExit(f"no HF weights in {hf}: run --phase weights first (the build phase needs them)")
    todo = sorted((p for p in peers if p in BUILT), key=lambda p: not p.startswith("ort_genai"))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(lambda p: build_peer(p, hf, work), todo))
    for peer in (p for p in todo if p.startswith("tpo")):
        donor = work / f"ort_genai_{BUILT[peer][1]}" / "model.onnx"
        rec = json.loads((work / peer / "built.json").read_text())
        if donor.is_file() and share_external_data(work / peer / "llm.onnx", donor):
            rec["shared_with"] = str(donor)
            (work / peer / "built.json").write_text(json.dumps(rec) + "\n")


# ----------------------------------------------------------------------------------------------- timing
class Clock:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3


def copy_bandwidth(device: str, gbytes: float = 4.0) -> float:
    """GB/s of a large copy, bytes read + written, median of 20 (CUDA events on the GPU)."""
    if device.startswith("cuda"):
        n = int(gbytes * 1e9) // 4
        a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
        b = torch.empty_like(a)
        times = []
        for i in range(25):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            b.copy_(a)
            end.record()
            end.synchronize()
            if i >= 5:
                times.append(start.elapsed_time(end) / 1e3)
        del a, b
        torch.cuda.empty_cache()
        return 2 * n * 4 / float(np.median(times)) / 1e9
    a = np.random.default_rng(0).random(int(gbytes * 1e9 / 16) // 8)
    b = np.empty_like(a)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t0)
    return 2 * a.nbytes / float(np.median(times)) / 1e9


def floor_bytes(cfg, ctx: int) -> int:
    """fp16 bytes read per decoded token: every weight except the input embedding, plus K and V at ``ctx``."""
    d, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * inter + 2 * d
    params = layers * per_layer + d + cfg.vocab_size * d  # + final norm + lm_head
    return 2 * params + 2 * layers * 2 * kv * ctx


# ----------------------------------------------------------------------------------------------- peers
def timed_runs(clock: Clock, fn, warmup: int, n: int) -> list[float]:
    return [clock.time(fn) for _ in range(warmup + n)][warmup:]


def run_tpo(path: Path, table: torch.Tensor, prompts: list[np.ndarray], args, clock: Clock) -> dict:
    from runtime.engines.ort_llm import OrtLLM

    cap = max(len(p) for p in prompts) + args.warmup + args.decode_steps + 2
    llm = OrtLLM(path, cap, args.device, cuda_graph=True)
    res = {"_loaded_gb": device_used_gb(args.device), "_kv_gb": llm.nbytes / 1e9}
    if not clock.cuda:  # numpy gathers on the CPU: a torch op there leaves its OpenMP threads spinning against ORT's
        table = table.numpy()
    for ids in prompts:
        res[len(ids)] = tpo_prompt(llm, table, torch.from_numpy(ids).to(table.device) if clock.cuda else ids, args,
                                   clock)
    llm.close()
    return res


def tpo_prompt(llm, table, idx, args, clock: Clock) -> dict:
    """``table`` [V, D] and ``idx`` [P]: torch CUDA tensors, or numpy arrays on the CPU."""
    def prefill():
        llm.reset()
        return llm.append(table[idx][None])  # the gather is timed too (ORT GenAI embeds in its graph)

    pre = timed_runs(clock, prefill, args.warmup, args.iters)
    tok = prefill()[2]
    steps = []
    for _ in range(args.warmup + args.decode_steps):
        clock.sync()
        t0 = time.perf_counter()
        tok = llm.append(table[tok].reshape(1, 1, -1))[2]  # the token id is read back: synchronous
        steps.append((time.perf_counter() - t0) * 1e3)
    return {"prefill": pre, "decode": steps[args.warmup:]}


def run_genai(folder: Path, prompts: list[np.ndarray], args, clock: Clock) -> dict:
    import onnxruntime_genai as og

    cfg = og.Config(str(folder))
    if not args.device.startswith("cuda"):
        cfg.clear_providers()
    model = og.Model(cfg)
    res = {"_loaded_gb": device_used_gb(args.device)}
    for ids in prompts:
        res[len(ids)] = genai_prompt(og, model, ids[None].astype(np.int32), args, clock)
    return res


def genai_prompt(og, model, ids: np.ndarray, args, clock: Clock) -> dict:
    length = ids.shape[1] + args.warmup + args.decode_steps + 2

    def generator():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)  # EOS cannot end it
        return og.Generator(model, params)

    pre = []
    for _ in range(args.warmup + args.iters):
        gen = generator()  # KV allocation outside the clock
        pre.append(clock.time(lambda g=gen: g.append_tokens(ids)))
    gen = generator()
    gen.append_tokens(ids)
    gen.generate_next_token()  # the first token comes from the prefill's logits: no model run
    steps = timed_runs(clock, gen.generate_next_token, args.warmup, args.decode_steps)
    return {"prefill": pre[args.warmup:], "decode": steps}


def run_hf(lm, prompts: list[np.ndarray], args, clock: Clock) -> dict:
    """transformers eager (SDPA attention; the config's attn_implementation) on the rebuilt random weights."""
    model = lm.to(args.device).eval()
    res = {"_loaded_gb": device_used_gb(args.device)}
    with torch.no_grad():
        for ids in prompts:
            res[len(ids)] = hf_prompt(model, torch.from_numpy(ids)[None].to(args.device), args, clock)
    lm.to("cpu")  # the device memory goes back before the next peer
    return res


def hf_prompt(model, x: torch.Tensor, args, clock: Clock) -> dict:
    from transformers import DynamicCache

    state = {}

    def prefill():
        state["cache"] = DynamicCache()
        out = model(input_ids=x, past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
        state["tok"] = out.logits[:, -1].argmax(-1, keepdim=True)

    def step():
        out = model(input_ids=state["tok"], past_key_values=state["cache"], use_cache=True)
        state["tok"] = out.logits[:, -1].argmax(-1, keepdim=True)
        int(state["tok"])  # the host needs the id (stop tokens), as generate does

    pre = timed_runs(clock, prefill, args.warmup, args.iters)
    prefill()
    return {"prefill": pre, "decode": timed_runs(clock, step, args.warmup, args.decode_steps)}


def device_used_gb(device: str) -> float:
    if not device.startswith("cuda"):
        return float("nan")
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 1e9


def run_peer(peer: str, args, lm, table, prompts, clock) -> tuple[dict, dict]:
    """(timings per prompt length, {"load_s", "device_gb"}) for one peer; its memory is released after."""
    before = device_used_gb(args.device)
    t0 = time.perf_counter()
    work = Path(args.work)
    if peer == "hf_eager":
        res = run_hf(lm, prompts, args, clock)
    elif peer.startswith("tpo"):
        res = run_tpo(work / peer / "llm.onnx", table, prompts, args, clock)
    else:
        res = run_genai(work / peer, prompts, args, clock)
    info = {"seconds": time.perf_counter() - t0, "device_gb_loaded": res.pop("_loaded_gb") - before}
    if "_kv_gb" in res:  # ours allocates its KV buffers at load; ORT GenAI per generator
        info["kv_gb_in_loaded"] = res.pop("_kv_gb")
        info["embedding_table_gb"] = table.numel() * table.element_size() / 1e9  # ours keeps it outside the graph
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res, info


# ----------------------------------------------------------------------------------------------- report
def gpu_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import platform

    return f"CPU-{platform.machine()}"


def write_results(args, cfg, bw: float, timings: dict, info: dict, processes: int = 1) -> list[Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name(args.device)).strip("_")
    command = "python benchmarks/llm_peers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if processes > 1:
        command += f" (merged from {processes} processes: " + "; ".join(
            " ".join(v["argv"]) for v in {json.dumps(i["argv"]): i for i in info.values()}.values()) + ")"
    paths = []
    sizes = {k: v.get("bytes") for k, v in info.items() if v.get("bytes")}
    for i, p in enumerate(args.prompt):
        floor = floor_bytes(cfg, p) / (bw * 1e9) * 1e3
        runs = {peer: {"decode_ms": float(np.median(t[p]["decode"])), "prefill_ms": float(np.median(t[p]["prefill"]))}
                for peer, t in timings.items()}
        doc = {"gpu": gpu_name(args.device), "layers": cfg.num_hidden_layers, "prompt_tokens": p,
               "copy_bw_GBps": bw, "floor_ms": floor, "runs": runs, "command": command}
        path = out / (f"llm_peers_{name}.json" if i == 0 else f"llm_peers_{name}_p{p}.json")
        path.write_text(json.dumps(doc, indent=2) + "\n")
        paths.append(path)
        print(f"\nprompt {p} tokens, {cfg.num_hidden_layers} layers on {doc['gpu']}: copy {bw:.0f} GB/s, fp16 floor "
              f"{floor:.3f} ms/token ({floor_bytes(cfg, p) / 1e9:.2f} GB)")
        print(f"{'peer':16s} {'decode ms':>10s} {'x floor':>8s} {'prefill ms':>11s}")
        for peer, r in runs.items():
            print(f"{peer:16s} {r['decode_ms']:10.3f} {r['decode_ms'] / floor:8.2f} {r['prefill_ms']:11.2f}")
    for peer, b in sizes.items():
        extra = info[peer].get("embedding_table_gb", 0.0)
        print(f"{peer:16s} files {b / 1e9:.3f} GB (+ embedding table outside the graph {extra:.3f} GB), device "
              f"memory after load {info[peer]['device_gb_loaded']:.3f} GB (of which KV buffers "
              f"{info[peer].get('kv_gb_in_loaded', 0.0):.3f} GB)")
    detail = {"samples_ms": {peer: {str(p): v for p, v in t.items()} for peer, t in timings.items()}, "peers": info,
              "versions": versions(), "args": vars(args)}
    (out / f"llm_peers_{name}_detail.json").write_text(json.dumps(detail, indent=2, default=str) + "\n")
    plot(out / f"llm_peers_{name}.png", args, cfg, bw, timings)
    return paths


def plot(path: Path, args, cfg, bw: float, timings: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    peers = list(timings)
    width = 0.8 / len(args.prompt)
    for j, p in enumerate(args.prompt):
        xs = np.arange(len(peers)) + j * width
        axes[0].bar(xs, [np.median(timings[k][p]["decode"]) for k in peers], width, label=f"context {p}")
        axes[0].axhline(floor_bytes(cfg, p) / (bw * 1e9) * 1e3, ls="--", lw=1, color=f"C{j}")
        axes[1].bar(xs, [np.median(timings[k][p]["prefill"]) for k in peers], width, label=f"{p} tokens")
    for ax, title in zip(axes, ("decode ms/token (dashed: fp16 bandwidth floor)", "prefill ms")):
        ax.set_xticks(np.arange(len(peers)) + width * (len(args.prompt) - 1) / 2, peers, rotation=20)
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"{gpu_name(args.device)}, {cfg.num_hidden_layers} layers, batch 1, copy {bw:.0f} GB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai",
                "onnxruntime-genai-cuda"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------------------------- main
def bench(args) -> Path:
    """Measure ``args.peers`` in this process; returns the partial record written under ``--work``."""
    cfg = llm_config(args.preset, args.layers)
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(3, cfg.vocab_size, p).astype(np.int64) for p in args.prompt]
    clock = Clock(args.device)
    bw = copy_bandwidth(args.device, args.copy_gb)
    print(f"[llm_peers] copy bandwidth {bw:.0f} GB/s", flush=True)
    lm = random_model(args.preset, args.layers, args.seed)  # the HF folder's weights, rebuilt (same seed)
    table = lm.get_input_embeddings().weight.detach().to(args.device)
    timings, info = {}, {}
    for peer in args.peers:
        if peer in BUILT and not (Path(args.work) / peer / "built.json").is_file():
            raise SystemExit(f"{peer} is not built in {args.work}: run --phase build --peers {peer} first")
        timings[peer], info[peer] = run_peer(peer, args, lm, table, prompts, clock)
        if peer in BUILT:
            info[peer].update(json.loads((Path(args.work) / peer / "built.json").read_text()))
        print(f"[llm_peers] {peer}: " + ", ".join(f"P={p}: decode {np.median(t['decode']):.3f} ms, prefill "
                                                   f"{np.median(t['prefill']):.2f} ms"
                                                   for p, t in timings[peer].items()), flush=True)
    part = Path(args.work) / f"partial_{os.getpid()}.json"
    part.write_text(json.dumps({"bw": bw, "timings": timings, "info": info, "argv": sys.argv[1:]}) + "\n")
    return part


def report(args, parts: list[Path]) -> list[Path]:
    """The result files from partial records (one: the usual single-process run; several: the documented
    fallback of one process per peer group, each with its own bandwidth measurement, the median is used)."""
    cfg = llm_config(args.preset, args.layers)
    records = [json.loads(p.read_text()) for p in parts]
    timings, info = {}, {}
    for rec in records:
        for peer, t in rec["timings"].items():
            timings[peer] = {int(k): v for k, v in t.items()}
            info[peer] = {**rec["info"][peer], "copy_bw_GBps": rec["bw"], "argv": rec["argv"]}
    bw = float(np.median([rec["bw"] for rec in records]))
    order = [peer for peer in PEERS if peer in timings]
    return write_results(args, cfg, bw, {k: timings[k] for k in order}, info, processes=len(records))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", nargs="+", choices=("weights", "build", "bench", "report", "all"), default=["all"],
                   help="bench measures --peers in this process and writes the results; report re-writes them from "
                        "every partial record under --work (fallback: one bench process per peer group)")
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--preset", default="videochat-tpo-7b", help="LLM dims from this TPO preset (tiny for the CPU)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the preset's)")
    p.add_argument("--prompt", type=int, nargs="+", default=[1024, 4096], help="prompt lengths (decode contexts)")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--iters", type=int, default=5, help="timed prefills per prompt length")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--copy-gb", type=float, default=4.0, help="bytes of the bandwidth copy (read side)")
    p.add_argument("--work", default="/tmp/llm_peers", help="weights and builds (kept between phases)")
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-hf", action="store_true", help="delete the HF folder after the build phase (disk)")
    p.add_argument("--jobs", type=int, default=1, help="builder runs at once (each holds the model in RAM)")
    args = p.parse_args(argv)
    phases = {"weights", "build", "bench"} if "all" in args.phase else set(args.phase)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU; use --device cpu for the plumbing run")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if "weights" in phases:
        rec = make_weights(work / "hf", args.preset, args.layers, args.seed)
        print(f"[llm_peers] weights: {rec['params'] / 1e9:.2f} B params in {rec['seconds']:.0f}s", flush=True)
    if "build" in phases:
        build_all(args.peers, work, args.jobs)
        if args.drop_hf:
            shutil.rmtree(work / "hf")
            print(f"[llm_peers] removed {work / 'hf'} (the bench phase rebuilds the weights in memory)")
    if "bench" in phases:
        report(args, [bench(args)])
    elif "report" in phases:
        report(args, sorted(work.glob("partial_*.json")))
    free = shutil.disk_usage(work).free
    print(f"[llm_peers] {work}: {free / 1e9:.1f} GB free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
