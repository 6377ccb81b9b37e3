"""Would an FP8 LLM graph decode faster than the fp16 one? The 7B shape's matmuls, fp16 vs FP8, on one GPU, one run.

    python benchmarks/fp8_matmul.py [--tokens 1 1024] [--reps 50] [--out DIR]

Issue 10 asks for INT8/FP8 "where the provider supports them". INT8 (and INT4) weight-only are built
(``MatMulNBits``, ``tpo export --precision int8|int4``). ONNX Runtime's CUDA provider has no weight-only FP8 matmul;
its one FP8 operator is ``com.microsoft.GemmFloat8`` (cuBLASLt, sm_89+): both operands FP8 e4m3, so every call
also quantizes its activations. This measures, at the matmul shapes of one Mistral-7B layer and its lm_head
(``N x K``: qkv 6144 x 4096, o 4096 x 4096, gate+up 28672 x 4096, down 4096 x 14336, lm_head 32000 x 4096), for
``--tokens`` rows (1 = a decode step, 1024 = a prefill):

- ``ort_fp16``: ONNX Runtime ``MatMul``, float16 (what the fp16 GQA graph runs);
- ``ort_fp8``: ``QuantizeLinear`` (float16 -> float8e4m3fn, a fixed scale) + ``GemmFloat8`` (e4m3 x e4m3 -> float16,
  ``transB=1``, fast accumulation), rows padded to a multiple of 16 (cuBLASLt's FP8 layout rule);
- ``torch_fp16``: ``torch.matmul``; ``torch_fp8``: the activation cast + ``torch._scaled_mm`` (cuBLASLt FP8), the
  same padding: the best FP8 GEMM the library stack offers, as the bound for ``ort_fp8``.

Every variant is timed with CUDA events around ``--reps`` back-to-back calls (ORT through IO binding on device
buffers, so no host copies), after a warm-up; ``ms`` is per call. Per token count it prints each shape's time and
weight bandwidth (weight bytes / time) and the layer sum x 32 + lm_head: the decode matmul time of the whole 7B
LLM per precision, against the fp16 floor (fp16 weight bytes / the copy bandwidth measured in the same run).
Writes ``fp8_matmul_<gpu>.json`` under ``--out``. Needs a CUDA GPU of compute capability >= 8.9 (FP8).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402,I001  (before onnxruntime: it loads the CUDA libraries onnxruntime-gpu links against)
import numpy as np  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (32000, 4096)}  # N x K of Mistral-7B (32 layers; q 4096 + k 1024 + v 1024, GQA 8 kv heads)
LAYERS = 32
ACT_SCALE = 1.0 / 32  # activations of ~N(0, 1) fit e4m3's range (448) with this fixed scale
FP8_ROWS = 16  # cuBLASLt FP8: the row count padded to a multiple of 16


def _pad(m: int) -> int:
    return -(-m // FP8_ROWS) * FP8_ROWS


def _events_ms(fn, reps: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


# GemmFloat8's attributes differ between onnxruntime releases (1.31.1 rejects computeType): the first set its
# schema accepts is used and recorded
FP8_ATTRS = ({"transA": 0, "transB": 1, "dtype": 10, "fastAccumulationMode": 1, "rowMajor": 1},
             {"transA": 0, "transB": 1, "dtype": 10}, {"transB": 1})


def ort_model(kind: str, n: int, k: int, attrs: dict | None = None):
    """``kind`` "fp16": X [M, K] fp16 x W [K, N] (an initializer) -> Y [M, N]; "fp8": QuantizeLinear(X) ->
    GemmFloat8(Xq, W [N, K] float8e4m3fn, transB=1) -> Y float16."""
    import onnx
    from onnx import TensorProto, helper

    gen = torch.Generator().manual_seed(0)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["M", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["M", n])
    if kind == "fp16":
        w = (torch.randn(k, n, generator=gen) * 0.02).half().numpy()
        inits = [onnx.numpy_helper.from_array(w, "W")]
        nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"])]
        opset = 18
    else:
        raw = (torch.randn(n, k, generator=gen) * 8).to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()
        inits = [helper.make_tensor("W", TensorProto.FLOAT8E4M3FN, [n, k], raw, raw=True),
                 onnx.numpy_helper.from_array(np.ones(1, np.float32), "one"),
                 onnx.numpy_helper.from_array(np.asarray(ACT_SCALE, np.float16), "xs"),
                 helper.make_tensor("xz", TensorProto.FLOAT8E4M3FN, [], [0])]
        nodes = [helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["Xq"]),
                 helper.make_node("GemmFloat8", ["Xq", "W", "", "one", "one", ""], ["Y"], domain="com.microsoft",
                                  **(FP8_ATTRS[0] if attrs is None else attrs))]
        opset = 19
    graph = helper.make_graph(nodes, f"{kind}_{n}x{k}", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)], ir_version=9)


def time_ort(kind: str, m: int, n: int, k: int, reps: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess, errors, used = None, [], None
    for attrs in (FP8_ATTRS if kind == "fp8" else (None,)):
        try:
            sess = ort.InferenceSession(ort_model(kind, n, k, attrs).SerializeToString(), so,
                                        providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])
            used = attrs
            break
        except Exception as e:  # noqa: BLE001 -- the provider's refusal is the result
            errors.append(f"session {attrs}: {type(e).__name__}: {str(e)[:300]}")
    if sess is None:
        return {"error": " | ".join(errors)}
    rows = m if kind == "fp16" else _pad(m)
    x = torch.randn(rows, k, dtype=torch.float16, device="cuda")
    y = torch.empty(rows, n, dtype=torch.float16, device="cuda")
    io = sess.io_binding()
    io.bind_input("X", "cuda", 0, np.float16, tuple(x.shape), x.data_ptr())
    io.bind_output("Y", "cuda", 0, np.float16, tuple(y.shape), y.data_ptr())
    try:
        sess.run_with_iobinding(io)
    except Exception as e:  # noqa: BLE001
        return {"error": f"run: {type(e).__name__}: {str(e)[:300]}"}
    ms = _events_ms(lambda: sess.run_with_iobinding(io), reps)
    return {"ms": ms, "rows": rows, **({"attributes": used} if used else {})}


def time_torch(kind: str, m: int, n: int, k: int, reps: int) -> dict:
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    if kind == "fp16":
        w = torch.randn(k, n, dtype=torch.float16, device="cuda") * 0.02
        return {"ms": _events_ms(lambda: torch.matmul(x, w), reps), "rows": m}
    rows = _pad(m)
    xp = torch.randn(rows, k, dtype=torch.float16, device="cuda")
    w = (torch.randn(n, k, device="cuda") * 8).to(torch.float8_e4m3fn)  # [N, K] row-major = column-major [K, N]
    one = torch.ones((), device="cuda")

    def fp8():
        xq = (xp * ACT_SCALE).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, w.t(), scale_a=one, scale_b=one, out_dtype=torch.float16)

    try:
        fp8()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return {"ms": _events_ms(fp8, reps), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 1024])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("fp8_matmul: needs a CUDA GPU (FP8 matmuls: compute capability >= 8.9)")
    cc = torch.cuda.get_device_capability()
    if cc < (8, 9):
        raise SystemExit(f"fp8_matmul: this GPU is sm_{cc[0]}{cc[1]}; FP8 matmuls need sm_89+ (Ada, Hopper, Blackwell)")
    import onnxruntime as ort

    from benchmarks.llm_peers import copy_bandwidth

    bw = copy_bandwidth("cuda")
    gpu = torch.cuda.get_device_name()
    variants = {"ort_fp16": lambda m, n, k: time_ort("fp16", m, n, k, args.reps),
                "ort_fp8": lambda m, n, k: time_ort("fp8", m, n, k, args.reps),
                "torch_fp16": lambda m, n, k: time_torch("fp16", m, n, k, args.reps),
                "torch_fp8": lambda m, n, k: time_torch("fp8", m, n, k, args.reps)}
    fp16_bytes = sum(2 * n * k for name, (n, k) in SHAPES.items() if name != "lm_head") * LAYERS \
        + 2 * np.prod(SHAPES["lm_head"])
    results: dict = {}
    print(f"{gpu} (sm_{cc[0]}{cc[1]}), onnxruntime {ort.__version__}, torch {torch.__version__}; copy {bw:.0f} GB/s; "
          f"fp16 matmul floor of the 7B decode {fp16_bytes / bw / 1e6:.3f} ms")
    for m in args.tokens:
        per: dict = {}
        for name, (n, k) in SHAPES.items():
            per[name] = {v: fn(m, n, k) for v, fn in variants.items()}
            cells = []
            for v, r in per[name].items():
                if "ms" in r:
                    wbytes = n * k * (2 if v.endswith("fp16") else 1)
                    r["weight_GBps"] = wbytes / (r["ms"] / 1e3) / 1e9
                    cells.append(f"{v} {r['ms'] * 1e3:8.1f} us ({r['weight_GBps']:5.0f} GB/s)")
                else:
                    cells.append(f"{v} ERROR")
            print(f"M={m:5d} {name:8s} {n:5d}x{k:5d}: " + " | ".join(cells), flush=True)
        totals = {}
        for v in variants:
            if all("ms" in per[s][v] for s in SHAPES):
                totals[v] = LAYERS * sum(per[s][v]["ms"] for s in SHAPES if s != "lm_head") + per["lm_head"][v]["ms"]
        line = ", ".join(f"{v} {t:.3f} ms" for v, t in totals.items())
        ratio = {f"{p}_fp8_over_fp16": totals[f"{p}_fp8"] / totals[f"{p}_fp16"] for p in ("ort", "torch")
                 if f"{p}_fp8" in totals and f"{p}_fp16" in totals}
        print(f"M={m}: 32 layers + lm_head: {line}; " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items())
              + (f"; fp16 floor {fp16_bytes / bw / 1e6:.3f} ms" if m == 1 else ""))
        results[str(m)] = {"shapes": per, "llm_total_ms": totals, "ratios": ratio}
    errors = {f"M={m} {s} {v}": r["error"] for m, d in results.items() for s, rs in d["shapes"].items()
              for v, r in rs.items() if "error" in r}
    for key, err in errors.items():
        print(f"error {key}: {err}")
    doc = {"gpu": gpu, "compute_capability": list(cc), "host": platform.processor() or platform.machine(),
           "onnxruntime": ort.__version__, "torch": torch.__version__, "copy_bw_GBps": bw, "layers": LAYERS,
           "shapes_NxK": SHAPES, "fp16_decode_floor_ms": fp16_bytes / bw / 1e6, "act_scale": ACT_SCALE,
           "reps": args.reps, "results": results, "errors": errors,
           "command": "python benchmarks/fp8_matmul.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.out:
        from runtime.report import write_result

        print(f"wrote {write_result(args.out, 'fp8_matmul', gpu, doc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
