"""benchmarks/fp8_matmul.py: the graphs it times are valid ONNX, and it refuses a machine without an FP8 GPU."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fp8_matmul  # noqa: E402


def test_graphs_are_valid_and_the_fp16_one_computes_a_matmul():
    import onnxruntime as ort

    for kind in ("fp16", "fp8"):
        model = fp8_matmul.ort_model(kind, 48, 32)
        onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in fp8_matmul.ort_model("fp8", 48, 32).graph.node]
    assert ops == ["QuantizeLinear", "GemmFloat8"]
    model = fp8_matmul.ort_model("fp16", 48, 32)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float16)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"X": x})[0], x.astype(np.float32) @ w, atol=2e-2)
    assert fp8_matmul._pad(1) == 16 and fp8_matmul._pad(1024) == 1024


def test_refuses_without_cuda_or_fp8(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        fp8_matmul.main([])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 7))  # Orin: no FP8
    with pytest.raises(SystemExit, match="sm_87.*sm_89"):
        fp8_matmul.main([])
