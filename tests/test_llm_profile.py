"""benchmarks/llm_profile.py: kernel classes and the per-step summary of a profiler trace (the GPU run itself is a
benchmark, not a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("llm_profile", Path(__file__).parents[1] / "benchmarks/llm_profile.py")
prof = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prof)


@pytest.mark.parametrize("name, cls", [
    ("void onnxruntime::contrib::cuda::FlashAttentionKernel<half>", "attention"),
    ("void flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128>>", "attention"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize64x64x64", "matmul"),
    ("void gemv2T_kernel_val<int, int, __half, __half, float, 128>", "matmul"),
    ("void onnxruntime::contrib::cuda::MatMulFloatInt4Kernel<half>", "matmul"),
    ("void onnxruntime::contrib::cuda::SkipLayerNormKernelSmall<half, float, half, 256, 8, true>", "norm"),
    ("void onnxruntime::contrib::cuda::RotaryEmbeddingBSNH<half>", "rotary"),
    ("void onnxruntime::cuda::_ArgMaxKernel<float>", "argmax"),
    ("Memcpy DtoH (Device -> Pinned)", "copy"),
    ("void onnxruntime::cuda::_BinaryElementWise<half>", "other"),
])
def test_kernel_classes(name, cls):
    assert prof.classify(name) == cls


def test_summary_per_step():
    ev = [{"ph": "X", "cat": "kernel", "name": "gemv2T_kernel", "dur": 100.0},
          {"ph": "X", "cat": "kernel", "name": "gemv2T_kernel", "dur": 300.0},
          {"ph": "X", "cat": "kernel", "name": "flash_fwd_splitkv_kernel", "dur": 50.0},
          {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "dur": 10.0},
          {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "dur": 999.0},  # host side: not counted
          {"ph": "i", "cat": "kernel", "name": "marker"}]
    s = prof.summarize_trace({"traceEvents": ev}, steps=2)
    assert s["kernel_ms"] == pytest.approx(0.23) and s["launches"] == 1.5
    assert s["class_ms"] == pytest.approx({"matmul": 0.2, "attention": 0.025, "copy": 0.005})
    assert s["top_kernels"][0] == {"name": "gemv2T_kernel", "ms": pytest.approx(0.2), "calls": 1.0}
