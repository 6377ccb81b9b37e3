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

__all__ = ["BACKENDS", "Engine", "dtype_name", "open_engine", "parse_device"]


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
