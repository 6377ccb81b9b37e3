"""OrtLLM on ONNX Runtime CUDA (deselected on CPU machines): decode captured in a CUDA graph equals the uncaptured
run and the reference, outputs are rewritten on every replay, a shared torch stream works, int4 on CUDA matches
int4 on the CPU provider, and the tiny TPO LLM's decode latency (with and without CUDA graphs) goes to $OUT.

Needs onnxruntime-gpu and the ONNX Runtime GenAI builder (onnxruntime-genai-cuda) on the machine. One command::

    OUT=${OUT:-/tmp/out} python -m pytest -m gpu tests/test_llm_gqa_gpu.py -q -rA 2>&1 | tee $OUT/llm_gqa_gpu.log
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch  # before runtime.* (onnxruntime): torch loads the CUDA libraries onnxruntime-gpu links against

from export.llm_gqa import build_from_hf, write_hf_folder
from runtime.engines.ort_llm import OrtLLM

pytestmark = pytest.mark.gpu
CAP = 256


def _tiny():
    from test_llm_gqa import tiny_mistral  # tests/ is on sys.path

    return tiny_mistral(seed=1, layers=4)


@pytest.fixture(scope="module")
def hf_model():
    return _tiny()


@pytest.fixture(scope="module")
def graphs(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa_gpu")
    hf = write_hf_folder(hf_model, root / "hf")
    built = {}

    def get(precision: str) -> Path:
        if precision not in built:
            info = build_from_hf(hf, root / precision, precision, log=print)
            built[precision] = root / precision / info["file"]
        return built[precision]

    return get


def _run(llm: OrtLLM, x: torch.Tensor, steps: list[int], poison: bool = True):
    """Append ``x`` in ``steps`` chunks; per step (logits, hidden, token) as host arrays. The output buffers are
    filled with NaN before every step: a replay that did not rewrite them would show."""
    out, p = [], 0
    for s in steps:
        if poison and llm.on_cuda:
            llm._logits.fill_(float("nan"))
            llm._hidden.fill_(float("nan"))
            llm._token.fill_(-1)
        logits, hidden, tok = llm.append(x[:, p:p + s])
        p += s
        lg = logits.float().cpu().numpy() if llm.on_cuda else np.array(logits)
        hd = hidden.float().cpu().numpy() if llm.on_cuda else np.array(hidden, np.float32)
        out.append((lg, hd, tok))
    return out


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graph_decode_matches_reference(hf_model, graphs, precision):
    steps = [24] + [1] * 60 + [5] + [1] * 10
    x = torch.randn(1, sum(steps), 256, generator=torch.Generator().manual_seed(0))
    from test_llm_gqa import hf_steps

    ref = hf_steps(hf_model, x, steps)
    graph = OrtLLM(graphs(precision), CAP, "cuda", cuda_graph=True)
    plain = OrtLLM(graphs(precision), CAP, "cuda", cuda_graph=False)
    xd = x.cuda()
    got_g, got_p = _run(graph, xd, steps), _run(plain, xd, steps)
    floor = 0.9999 if precision == "fp16" else 0.999
    for (lg, hd, tok), (lp, hp, tp), (rl, rh, _) in zip(got_g, got_p, ref):
        assert np.isfinite(lg).all() and np.isfinite(hd).all()
        # replay == uncaptured run: the same kernels; allow a few fp16 ulps (0.004 at |x| = 4) for reductions
        assert np.abs(lg - lp).max() <= 2e-2 and np.abs(hd - hp).max() <= 2e-2
        assert tok == tp == int(np.argmax(lg))  # the graph's ArgMax
        assert _cos(lg, rl) > floor and _cos(hd, rh) > floor
    for layer in range(4):
        for kind in ("key", "value"):
            torch.testing.assert_close(graph.kv_view(layer, kind), plain.kv_view(layer, kind), atol=2e-2, rtol=0)


def test_reset_equals_a_fresh_driver(graphs):
    """A request after reset() equals a fresh driver, whatever the previous request left in the KV buffers (here
    NaN, as a failed run could leave: reset zeroes them, since a masked-out position may still be multiplied
    by a zero attention weight)."""
    steps = [10] + [1] * 20
    x = torch.randn(1, sum(steps), 256, generator=torch.Generator().manual_seed(1)).cuda()
    y = torch.randn(1, sum(steps), 256, generator=torch.Generator().manual_seed(2)).cuda()
    fresh = _run(OrtLLM(graphs("fp16"), CAP, "cuda"), y, steps)
    llm = OrtLLM(graphs("fp16"), CAP, "cuda")
    _run(llm, x, steps)
    for buf in llm._kv:
        buf.fill_(float("nan"))
    llm.reset()
    again = _run(llm, y, steps)
    for a, b in zip(fresh, again):
        assert np.isfinite(b[0]).all(), "NaN logits after reset"
        assert np.abs(a[0] - b[0]).max() <= 2e-2 and a[2] == b[2]


def test_shared_stream_equals_own_stream(graphs):
    """ORT on torch's stream (no synchronisation between runs) equals ORT on its own stream."""
    steps = [10] + [1] * 20
    y = torch.randn(1, sum(steps), 256, generator=torch.Generator().manual_seed(2)).cuda()
    own = _run(OrtLLM(graphs("fp16"), CAP, "cuda"), y, steps)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # y was written on the default stream: order it first
    with torch.cuda.stream(stream):
        shared = _run(OrtLLM(graphs("fp16"), CAP, "cuda", stream=stream), y, steps)
    for a, c in zip(own, shared):
        assert np.isfinite(c[0]).all(), "NaN logits on the shared stream"
        assert np.abs(a[0] - c[0]).max() <= 2e-2 and a[2] == c[2]


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_quantized_cuda_matches_cpu_provider(graphs, precision):
    """The same int4 / int8 graph (MatMulNBits) on CUDA and on the CPU provider (int8: whether this
    onnxruntime-gpu has 8-bit MatMulNBits kernels on CUDA)."""
    steps = [16] + [1] * 16
    x = torch.randn(1, sum(steps), 256, generator=torch.Generator().manual_seed(3))
    gpu = _run(OrtLLM(graphs(precision), CAP, "cuda"), x.cuda(), steps)
    cpu = _run(OrtLLM(graphs(precision), CAP, "cpu"), x.numpy(), steps)
    agree = sum(a[2] == b[2] for a, b in zip(gpu, cpu))
    assert all(_cos(a[0], b[0]) > 0.999 for a, b in zip(gpu, cpu))
    assert agree >= len(steps) - 2


def test_tiny_tpo_decode_latency(tmp_path):
    """Measurement, not a timed assertion: the tiny TPO LLM (fp16 GQA graph) decode ms/token with and without CUDA
    graphs, medians over 200 steps after 20 warm-up steps, written to $OUT/llm_gqa_tiny_decode.json."""
    from export.llm_gqa import export_llm_gqa
    from tpo_core.config import get_preset
    from tpo_core.model import TPOModel

    model = TPOModel.from_config(get_preset("tiny")).eval()
    model.llm.merge_lora()
    model = model.to(torch.float16)
    export_llm_gqa(model, tmp_path, "fp16", model.config.llm.max_context, log=print)
    row = torch.randn(1, 1, model.config.llm.hidden_size, device="cuda", dtype=torch.float16)
    result = {"gpu": torch.cuda.get_device_name(), "layers": model.config.llm.num_layers}
    for graph in (True, False):
        llm = OrtLLM(tmp_path / "llm.onnx", model.config.llm.max_context, "cuda", cuda_graph=graph)
        llm.append(torch.randn(1, 32, model.config.llm.hidden_size, device="cuda", dtype=torch.float16))
        times = []
        for _ in range(220):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, _, tok = llm.append(row)  # reads the token back: a device sync
            times.append((time.perf_counter() - t0) * 1e3)
            assert 0 <= tok < llm.vocab_size
        result["cuda_graph" if graph else "no_graph"] = {"decode_ms_p50": float(np.median(times[20:])),
                                                        "decode_ms_p90": float(np.percentile(times[20:], 90))}
    print(json.dumps(result))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "llm_gqa_tiny_decode.json").write_text(json.dumps(result, indent=2) + "\n")
