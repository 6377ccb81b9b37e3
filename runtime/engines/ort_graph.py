"""A component on ONNX Runtime CUDA with its runs captured in CUDA graphs, one graph per input-shape signature.

A small graph (a SAM2 tracking step, a head) costs more in kernel launches than in kernels: ORT launches each node
from the host. Under a CUDA graph a run is one launch. ORT captures a session's run when the session was opened with
``enable_cuda_graph`` and every run binds the same device addresses; it refuses such a session at load time when any
node would run on the CPU (shape arithmetic over symbolic dims, an op without a CUDA kernel).

:class:`GraphedOrtEngine` therefore opens one session per distinct set of input shapes (at most ``max_graphs``),
with the symbolic dims fixed to that signature's sizes (``free_dims``: shapes become static and their arithmetic
folds away at load), static input and output buffers allocated once, and one IO binding. A run copies the inputs into
the static inputs (device to device), replays, and returns copies of the static outputs (so a caller may keep a result
while the next run overwrites the buffers). A signature ORT refuses, or one beyond ``max_graphs``, runs on a plain
:class:`~runtime.engines.ort.OrtEngine` opened on first need; :attr:`GraphedOrtEngine.status` says, per signature,
which ran and why (``tpo bench`` prints it).

Each captured session holds its own copy of the weights on the device (ORT sessions do not share initializers):
``max_graphs`` bounds that. ``Pipeline(cuda_graphs=False)`` (``tpo bench --no-cuda-graphs``) opens plain engines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.engines.base import Array, Engine
from runtime.engines.ort import ONNX_ELEM, ORT_ERRORS, OrtEngine, as_device_tensor
from runtime.manifest import ComponentSpec

Signature = tuple[tuple[str, tuple[int, ...]], ...]


class _Captured:
    """One session opened for one input-shape signature: static buffers bound once, replayed per run."""

    def __init__(self, engine: OrtEngine, inputs: dict[str, Array], out_shapes: dict[str, tuple[int, ...]]):
        import torch

        self.engine, self.torch = engine, torch
        dev = torch.device("cuda", engine.device_index)
        self.inputs = {s.name: torch.empty(tuple(inputs[s.name].shape), dtype=getattr(torch, s.dtype), device=dev)
                       for s in engine.input_specs}
        self.outputs = {s.name: torch.empty(out_shapes[s.name], dtype=getattr(torch, s.dtype), device=dev)
                        for s in engine.output_specs}
        self.binding = engine.session.io_binding()
        for name, buf in self.inputs.items():
            self.binding.bind_input(name, "cuda", engine.device_index, ONNX_ELEM[engine.spec.input(name).dtype],
                                    tuple(buf.shape), buf.data_ptr())
        for spec in engine.output_specs:
            buf = self.outputs[spec.name]
            self.binding.bind_output(spec.name, "cuda", engine.device_index, ONNX_ELEM[spec.dtype], tuple(buf.shape),
                                     buf.data_ptr())
        self.runs = 0

    def run(self, inputs: dict[str, Array], stream: Any) -> dict[str, Array]:
        torch = self.torch
        dev = torch.device("cuda", self.engine.device_index)
        for name, buf in self.inputs.items():
            buf.copy_(as_device_tensor(self.engine.name, name, inputs[name], dev))
        # ORT computes on its own stream: the copies (torch's stream) must be done first
        (stream if stream is not None else torch.cuda.current_stream(dev)).synchronize()
        self.engine.session.run_with_iobinding(self.binding)  # ORT captures on an early run, then replays
        self.runs += 1
        return {name: buf.clone() for name, buf in self.outputs.items()}

    def close(self) -> None:
        self.binding = None
        self.engine.close()


class GraphedOrtEngine(Engine):
    """:class:`~runtime.engines.ort.OrtEngine` semantics on CUDA, with runs replayed from CUDA graphs where ORT allows.

    Args (beyond :class:`Engine`):
        max_graphs: input-shape signatures captured at most (each is a session with its own weights on the device).
        **ort_options: passed to every :class:`OrtEngine` opened (threads, provider_options, ...).

    Attributes:
        status: ``{signature as text: "cuda graph" | "plain: <reason>"}``, in order of first use.
    """

    backend = "ort"

    def __init__(self, name: str, spec: ComponentSpec, root: str | Path, device: str = "cuda", *,
                 max_graphs: int = 2, **ort_options: Any):
        super().__init__(name, spec, root, device)
        if self.device_type != "cuda":
            raise ValueError(f"{name}: CUDA graphs need device='cuda', got {device!r}; use OrtEngine on the CPU")
        if not isinstance(max_graphs, int) or max_graphs < 0:
            raise ValueError(f"{name}: max_graphs must be an int >= 0, got {max_graphs!r}")
        self.max_graphs, self.ort_options = max_graphs, ort_options
        self._graphs: dict[Signature, _Captured | None] = {}  # None: this signature runs on the plain engine
        self._plain: OrtEngine | None = None
        self.status: dict[str, str] = {}

    @property
    def captured(self) -> int:
        """Signatures running under CUDA graphs."""
        return sum(g is not None for g in self._graphs.values())

    def _run(self, inputs: dict[str, Array], bindings: dict[str, int], profile: str, stream: Any,
             outputs: dict[str, Array]) -> dict[str, Array]:
        sig: Signature = tuple((s.name, tuple(int(n) for n in inputs[s.name].shape)) for s in self.input_specs)
        if sig not in self._graphs:
            self._graphs[sig] = self._capture(sig, inputs, bindings)
        graph = self._graphs[sig]
        if graph is None or outputs:  # caller-owned output buffers: the plain engine writes into them
            return self._plain_engine().run(inputs, profile=profile, stream=stream, outputs=outputs)
        try:
            return graph.run(inputs, stream)
        except (RuntimeError, *ORT_ERRORS) as e:  # ORT's IO-binding run raises a plain RuntimeError
            if graph.runs == 0:  # ORT captures in the first run: this graph cannot be captured; run it plainly
                self._graphs[sig] = None
                graph.close()
                self.status[_key(sig)] = f"plain: the CUDA graph capture failed: {_first_line(e)}"
                return self._plain_engine().run(inputs, profile=profile, stream=stream)
            shapes = {k: tuple(v.shape) for k, v in inputs.items()}
            raise RuntimeError(f"{self.name}: ONNX Runtime failed on inputs {shapes} (CUDA graph): {e}") from e

    def _capture(self, sig: Signature, inputs: dict[str, Array], bindings: dict[str, int]) -> _Captured | None:
        key = _key(sig)
        if self.captured >= self.max_graphs:
            self.status[key] = f"plain: max_graphs={self.max_graphs} signatures already captured"
            return None
        shapes = self.output_shapes(bindings)
        unknown = sorted(n for n, s in shapes.items() if s is None)
        if unknown:
            self.status[key] = f"plain: output shapes {unknown} are not fixed by the inputs"
            return None
        try:
            eng = OrtEngine(self.name, self.spec, self.root, self.device, free_dims=dict(bindings), cuda_graph=True,
                            **self.ort_options)
            graph = _Captured(eng, inputs, shapes)
        except (RuntimeError, ValueError, *ORT_ERRORS) as e:
            self.status[key] = f"plain: ONNX Runtime refused a CUDA graph: {_first_line(e)}"
            return None
        self.status[key] = "cuda graph"
        return graph

    def _plain_engine(self) -> OrtEngine:
        if self._plain is None:
            self._plain = OrtEngine(self.name, self.spec, self.root, self.device, **self.ort_options)
        return self._plain

    def close(self) -> None:
        for graph in self._graphs.values():
            if graph is not None:
                graph.close()
        if self._plain is not None:
            self._plain.close()
        self._graphs, self._plain = {}, None
        super().close()


def _key(sig: Signature) -> str:
    return ", ".join(f"{n}{list(s)}" for n, s in sig)


def _first_line(e: Exception) -> str:
    """The informative part of an ORT error (its C++ prefix is a long template signature)."""
    text = " ".join(str(e).split())
    for marker in ("CUDA failure", "Error in execution"):
        if marker in text:
            text = text[text.index(marker):]
            break
    return text[:240]
