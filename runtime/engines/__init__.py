"""Engine wrappers: one interface (:class:`Engine`), one backend per module, one factory (:func:`open_engine`).

    >>> m = Manifest.load("export/tiny")
    >>> with open_engine(m, "vision", backend="ort", device="cpu", threads=4) as eng:
    ...     out = eng.run({"pixel_values": frames})          # numpy in, numpy out
    >>> eng = open_engine(m, "llm", backend="tensorrt", device="cuda")
    >>> out = eng.run(feeds, profile="decode", stream=torch.cuda.current_stream())

Backends are imported on first use: importing this package needs neither TensorRT nor torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from runtime.engines.base import Engine, dtype_name, parse_device
from runtime.manifest import Manifest

BACKENDS = {"ort": ("runtime.engines.ort", "OrtEngine"), "tensorrt": ("runtime.engines.trt", "TensorRTEngine")}

__all__ = ["BACKENDS", "Engine", "check_device", "cuda_device_count", "dtype_name", "open_engine", "parse_device"]


def cuda_device_count() -> int:
    """CUDA devices the NVIDIA driver reports (``cuInit`` + ``cuDeviceGetCount`` through ``libcuda``; no torch); 0
    when there is no driver or no device."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def check_device(backend: str, device: str) -> None:
    """Refuse a CUDA device this machine cannot run, before anything is opened: ValueError naming what is missing
    (a CUDA device, the ONNX Runtime CUDA execution provider, torch with CUDA) and the fix."""
    kind, index = parse_device(device)
    if kind != "cuda":
        return
    n = cuda_device_count()
    if n == 0:
        raise ValueError(f"no CUDA device found (device={device!r}: the NVIDIA driver reports no GPU, or libcuda is "
                         "not installed); run with --device cpu (device='cpu'), or on a machine with an NVIDIA GPU "
                         "and driver")
    if index >= n:
        raise ValueError(f"device={device!r} but this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1}); pick one "
                         "of those")
    if backend == "ort":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"this onnxruntime has no CUDAExecutionProvider (available: "
                             f"{ort.get_available_providers()}): it is the CPU build. Install onnxruntime-gpu "
                             "matching your CUDA (`pip uninstall onnxruntime && pip install onnxruntime-gpu`), or run "
                             "with --device cpu")
    try:
        import torch
    except ImportError as e:
        raise ValueError(f"device={device!r} needs torch with CUDA (device arrays are torch tensors); install a CUDA "
                         "build of torch, or run with --device cpu") from e
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: this torch ({torch.__version__}) has no CUDA; install a CUDA build of "
                         "torch, or run with --device cpu")


def open_engine(manifest: Manifest | str | Path, component: str, backend: str = "ort", device: str = "cpu",
                **opts: Any) -> Engine:
    """Open one manifest component on a backend.

    Args:
        manifest: a loaded :class:`Manifest`, or its folder (loaded and hash-verified here).
        component: a component name of the manifest (``vision``, ``llm``, ...).
        backend: ``"ort"`` (ONNX Runtime, CPU or CUDA) or ``"tensorrt"`` (built engine, CUDA only).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        **opts: backend options (see :class:`~runtime.engines.ort.OrtEngine`,
            :class:`~runtime.engines.trt.TensorRTEngine`).
    """
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    if manifest.root is None:
        raise ValueError("the manifest has no root folder; load it with Manifest.load(folder)")
    if component not in manifest.components:
        raise ValueError(f"no component {component!r} in {manifest.root}; components: {sorted(manifest.components)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {sorted(BACKENDS)}")
    module, cls = BACKENDS[backend]
    engine_cls = getattr(importlib.import_module(module), cls)
    return engine_cls(component, manifest.components[component], manifest.root, device, **opts)
