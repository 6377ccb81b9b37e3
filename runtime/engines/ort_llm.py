"""Driver for the GQA LLM graph (``tpo export --llm-graph gqa``, ``export/llm_gqa.py``) on ONNX Runtime.

The graph's attention reads and writes ONE preallocated KV buffer per tensor in place: :class:`OrtLLM` owns
``2 L`` buffers ``[1, KVH, capacity, Hd]`` and binds each as both ``past_*`` (input) and ``present_*`` (output),
so nothing is copied or allocated per token (memory: ``2 L KVH capacity Hd`` elements, half of the ping-pong
:class:`runtime.kv_cache.KVCache`). A 0/1 ``attention_mask`` buffer ``[1, capacity]`` holds the cached positions;
the graph derives positions and sequence lengths from it.

Devices: ``"cpu"``: numpy buffers, ORT CPU provider. ``"cuda[:N]"``: torch CUDA buffers bound by address (IO
binding; ``onnxruntime-gpu`` and torch needed, import torch before onnxruntime). With ``cuda_graph=True`` (default
on CUDA) the session is created with ``enable_cuda_graph``; a decode step (one new token after a prefill) binds
only static buffers (the one-row embedding buffer, the whole ``[1, capacity]`` mask, the KV buffers, logits, token
and hidden outputs) and runs with the run option ``gpu_graph_id=1``, so ONNX Runtime captures it once and then
replays the CUDA graph; prefill (``seq > 1``) runs uncaptured (``gpu_graph_id=-1``) with its own shapes.

Per step the host writes one embedding row and one mask entry on the device and reads back only the token id
(``next_token`` is the graph's ArgMax); logits stay on the device for logits processors and sampling.

Interface (what the generator calls)::

    llm = OrtLLM.from_manifest(manifest, device="cuda")      # or OrtLLM(path, capacity, device)
    llm.reset()
    llm.check_fits(prompt_len, max_new=0)                     # ValueError naming the lengths and the fix
    logits, hidden, token = llm.append(embeds)                # embeds [1, S, D] -> logits [V] float32,
                                                              # hidden [S, D], token int (greedy argmax)
    llm.length, llm.capacity

``logits`` and ``hidden`` are views of the driver's output buffers (device tensors on CUDA, numpy on the CPU):
they are overwritten by the next ``append``; copy them to keep them.

Every ``append`` calls :func:`runtime.engines.gate.wait_turn` right before the session run (after the host-side
binding): on a stream's background re-ask thread the step waits while a frame is being processed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtime.contract.prompt import capacity_error
from runtime.engines.gate import wait_turn
from runtime.engines.ort import ONNX_ELEM, OPT_LEVELS, ORT_ERRORS

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
             "tensor(int64)": "int64"}
GRAPH_ID_DECODE, GRAPH_ID_SKIP = "1", "-1"


class OrtLLM:
    """The GQA LLM graph with its KV buffers (see the module docstring).

    Args:
        path: the ``llm.onnx`` written by ``tpo export --llm-graph gqa`` (or ``export.llm_gqa.build_from_hf``).
        capacity: KV positions (the manifest's ``kv.max_context``); at most the graph's RoPE table length.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        cuda_graph: CUDA only: capture decode steps in a CUDA graph (``enable_cuda_graph``).
        stream: CUDA only: a ``torch.cuda.Stream`` (or raw ``cudaStream_t`` handle) for ORT to compute on. Given,
            the driver's mask/embedding writes, the run and the token read-back are all issued on that one stream (no
            host sync before a run); produce ``embeds`` on it too. Not the legacy default stream under CUDA graphs.
        static_decode_mask: decode steps reuse one binding of static buffers with the whole ``[1, capacity]`` mask
            (default; required by CUDA graphs, and on the CPU it saves re-binding ``4 L + 5`` tensors per token:
            0.18 vs 0.32 ms/token for the 4-layer tiny LLM on 2 cores). False: a fresh binding per step with the
            mask cut to ``length + 1`` (not allowed with ``cuda_graph``).
        threads, spinning, optimization, provider_options, log_severity: as :class:`runtime.engines.ort.OrtEngine`.
    """

    def __init__(self, path: str | Path, capacity: int, device: str = "cpu", *, cuda_graph: bool = True,
                 stream: Any = None, static_decode_mask: bool = True, threads: int | None = None,
                 spinning: bool = False, optimization: str = "all", provider_options: dict | None = None,
                 log_severity: int = 3):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"LLM graph {path} is missing; export it with `tpo export --llm-graph gqa`")
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive int (kv.max_context), got {capacity!r}")
        if optimization not in OPT_LEVELS:
            raise ValueError(f"optimization {optimization!r} not in {list(OPT_LEVELS)}")
        self.device, self.capacity, self.length = device, capacity, 0
        self.on_cuda = device.startswith("cuda")
        if not self.on_cuda and device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        self.cuda_graph = bool(cuda_graph and self.on_cuda)
        self.static_decode = bool(static_decode_mask)
        if self.cuda_graph and not self.static_decode:
            raise ValueError("cuda_graph=True needs static_decode_mask=True (a captured graph replays fixed addresses)")
        self._shared_stream = stream is not None
        self._stream = None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[optimization]
        opts.log_severity_level = log_severity
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.on_cuda:
            self._open_cuda(path, opts, stream, provider_options or {})
        else:
            self.session = self._session(path, opts, ["CPUExecutionProvider"])
        self._read_io(path)
        self._alloc()
        self._decode_binding = None
        # gpu_graph_id is set on every run: ORT's Python wrapper reads it, and a missing entry costs a C++
        # exception per run (0.28 ms measured with onnxruntime 1.32 on the CPU, longer than the tiny LLM's step)
        self._ro_prefill, self._ro_decode = ort.RunOptions(), ort.RunOptions()
        self._ro_prefill.add_run_config_entry("gpu_graph_id", GRAPH_ID_SKIP)
        self._ro_decode.add_run_config_entry("gpu_graph_id", GRAPH_ID_DECODE if self.cuda_graph else GRAPH_ID_SKIP)
        if self._shared_stream:  # the token read-back on the same stream waits for the run
            for ro in (self._ro_prefill, self._ro_decode):
                ro.add_run_config_entry("disable_synchronize_execution_providers", "1")

    @classmethod
    def from_manifest(cls, manifest, device: str = "cpu", **kwargs) -> OrtLLM:
        """Open the ``llm`` component of a loaded :class:`runtime.manifest.Manifest` exported with ``--llm-graph
        gqa``; its ``kv`` block must agree with the graph."""
        kv = manifest.kv
        if kv.graph != "gqa":
            raise ValueError(f"{manifest.root}: the llm graph is the plain past/present one (kv.graph = "
                             f"{kv.graph!r}); OrtLLM drives GQA graphs: re-export with `tpo export "
                             "--llm-graph gqa`, or run this export through runtime.generator with KVCache")
        spec = manifest.components["llm"]
        llm = cls(manifest.path_of(spec.file), kv.max_context, device, **kwargs)
        got = {"layers": llm.layers, "kv_heads": llm.kv_heads, "head_dim": llm.head_dim}
        bad = {k: (v, getattr(kv, k)) for k, v in got.items() if getattr(kv, k) != v}
        if bad:
            raise ValueError(f"{spec.file} disagrees with the manifest's kv block (graph, manifest): {bad}; "
                             "re-export to regenerate both")
        return llm

    # ------------------------------------------------------------------------------------------ setup
    def _session(self, path: Path, opts: ort.SessionOptions, providers: list) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers)
        except ORT_ERRORS as e:
            hint = " (CUDA graphs need every node on the CUDA provider; retry with cuda_graph=False)" \
                if self.cuda_graph else ""
            raise RuntimeError(f"ONNX Runtime could not load {path}{hint}: {e}") from e

    def _open_cuda(self, path: Path, opts: ort.SessionOptions, stream: Any, extra: dict) -> None:
        import torch

        self._torch = torch
        self._dev = torch.device(self.device)
        if self._dev.index is None:
            self._dev = torch.device("cuda", torch.cuda.current_device())
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"this onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()}); "
                               "install onnxruntime-gpu matching your CUDA, or use device='cpu'")
        cuda = {"device_id": self._dev.index, "enable_cuda_graph": "1" if self.cuda_graph else "0", **extra}
        if stream is not None:
            handle = int(getattr(stream, "cuda_stream", stream))
            if handle == 0 and self.cuda_graph:
                raise ValueError("CUDA graphs cannot be captured on the legacy default stream; pass a "
                                 "torch.cuda.Stream() (or cuda_graph=False)")
            self._stream = stream if isinstance(stream, torch.cuda.Stream) else torch.cuda.ExternalStream(handle)
            cuda.update(has_user_compute_stream="1", user_compute_stream=str(handle))
        self.session = self._session(path, opts, [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])
        if "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError(f"ONNX Runtime fell back to {self.session.get_providers()} for {path}")

    def _read_io(self, path: Path) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        self.layers = sum(1 for n in ins if n.startswith("past_key_"))
        need_in = ["inputs_embeds", "attention_mask"] + [f"past_{k}_{i}" for i in range(self.layers)
                                                         for k in ("key", "value")]
        need_out = ["logits", "next_token", "hidden_states"] + [f"present_{k}_{i}" for i in range(self.layers)
                                                                for k in ("key", "value")]
        missing = [n for n in need_in if n not in ins] + [n for n in need_out if n not in outs]
        if self.layers == 0 or missing:
            raise ValueError(f"{path} is not a GQA LLM graph (missing {missing or ['past_key_0']}); export it with "
                             "`tpo export --llm-graph gqa`")
        emb, kv, logits = ins["inputs_embeds"], ins["past_key_0"], outs["logits"]
        self.dtype = ORT_TYPES.get(emb.type)
        if self.dtype is None or self.dtype == "int64":
            raise ValueError(f"{path}: inputs_embeds has type {emb.type}; expected float32/float16/bfloat16")
        if self.dtype == "bfloat16" and not self.on_cuda:
            raise ValueError(f"{path} is a bfloat16 graph: numpy has no bfloat16; use device='cuda'")
        self.hidden_size, self.vocab_size = int(emb.shape[2]), int(logits.shape[1])
        self.kv_heads, self.head_dim = int(kv.shape[1]), int(kv.shape[3])
        self._kv_names = [(f"past_{k}_{i}", f"present_{k}_{i}") for i in range(self.layers) for k in ("key", "value")]

    def _alloc(self) -> None:
        c, d = self.capacity, self.hidden_size
        shape = (1, self.kv_heads, c, self.head_dim)
        self._kv = [self._zeros(shape, self.dtype) for _ in self._kv_names]
        self._mask = self._zeros((1, c), "int64")
        self._logits = self._zeros((1, self.vocab_size), "float32")
        self._token = self._zeros((1,), "int64")
        self._hidden = self._zeros((c * d,), self.dtype)
        self._embed1 = self._zeros((1, 1, d), self.dtype)

    def _zeros(self, shape: tuple, dtype: str) -> Any:
        if not self.on_cuda:
            return np.zeros(shape, dtype=dtype)
        return self._torch.zeros(shape, dtype=getattr(self._torch, dtype), device=self._dev)

    @property
    def nbytes(self) -> int:
        """Bytes of the KV buffers."""
        return 2 * self.layers * self.kv_heads * self.capacity * self.head_dim * (4 if self.dtype == "float32" else 2)

    # ------------------------------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every cached position. The buffers are kept (CUDA graphs replay their addresses) and zeroed:
        the attention masks stale positions out of the softmax, but a kernel may still multiply a masked value
        by a zero weight, and a NaN or inf left by an earlier request (a failed run) would survive that as
        NaN. Zeroing costs one memset of :attr:`nbytes` (0.5 GB at the 7B shape and 4096 positions: about
        0.15 ms at the H200's copy bandwidth), once per request."""
        self.length = 0
        for buf in (*self._kv, self._mask):
            if self.on_cuda:
                buf.zero_()
            else:
                buf.fill(0)

    def check_fits(self, prompt_len: int, max_new: int = 0) -> None:
        """Raise ValueError if ``prompt_len`` (+ ``max_new``) more positions exceed the capacity (the contract's
        wording: ``runtime.contract.prompt.capacity_error``)."""
        err = capacity_error(prompt_len, max_new, self.capacity, self.length)
        if err:
            raise ValueError(err)

    def kv_view(self, layer: int, kind: str = "key") -> Any:
        """The cached keys/values of ``layer``: a view ``[1, KVH, length, Hd]`` of its buffer (RoPE applied)."""
        return self._kv[2 * layer + (kind == "value")][:, :, : self.length]

    # ------------------------------------------------------------------------------------------ run
    def append(self, embeds: Any, read_token: bool = True) -> tuple[Any, Any, int | None]:
        """Run ``embeds [1, S, D]`` after the cached positions.

        Returns (logits ``[V]`` float32 of the last position, hidden ``[S, D]`` final-norm states, the argmax
        token id as an int, or None when ``read_token`` is False: no device-to-host copy, no sync).
        """
        if self._stream is not None:
            with self._torch.cuda.stream(self._stream):
                return self._append(embeds, read_token)
        return self._append(embeds, read_token)

    def _append(self, embeds: Any, read_token: bool) -> tuple[Any, Any, int | None]:
        x = self._as_input(embeds)
        s, p = int(x.shape[1]), self.length
        self.check_fits(s)
        decode = s == 1 and p > 0 and self.static_decode
        self._mask[0, p:p + s] = 1
        try:
            if decode:
                binding, ro = self._decode(x), self._ro_decode
            else:
                binding, ro = self._prefill_binding(x, p + s), self._ro_prefill
            wait_turn()  # a stream's background re-ask waits here while a frame is being processed (engines.gate)
            if self.on_cuda and not self._shared_stream:
                self._torch.cuda.current_stream(self._dev).synchronize()  # torch wrote the inputs; ORT has its own
            self.session.run_with_iobinding(binding, ro)
        except ORT_ERRORS as e:
            self._mask[0, p:p + s] = 0
            raise RuntimeError(f"ONNX Runtime failed on the LLM step (embeds {tuple(x.shape)}, {p} cached): {e}") \
                from e
        self.length = p + s
        hidden = self._hidden[: s * self.hidden_size].reshape(s, self.hidden_size)
        token = None
        if read_token:
            token = int(self._token.item()) if self.on_cuda else int(self._token[0])
        return self._logits[0], hidden, token

    def _as_input(self, embeds: Any) -> Any:
        shape = tuple(embeds.shape)
        if len(shape) != 3 or shape[0] != 1 or shape[1] < 1 or shape[2] != self.hidden_size:
            raise ValueError(f"embeds must be [1, S, {self.hidden_size}] (batch 1, S >= 1), got {list(shape)}")
        if not self.on_cuda:
            x = embeds.detach().cpu().numpy() if hasattr(embeds, "detach") else np.asarray(embeds)
            return np.ascontiguousarray(x, dtype=self.dtype)
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(embeds)) if isinstance(embeds, np.ndarray) else embeds
        if x.device.type == "cuda" and x.device != self._dev:
            raise ValueError(f"embeds are on {x.device}, the LLM on {self._dev}; move them first")
        return x.to(device=self._dev, dtype=getattr(torch, self.dtype)).contiguous()

    def _bind(self, binding, name: str, buf: Any, output: bool = False) -> None:
        if self.on_cuda:
            dtype = str(buf.dtype).removeprefix("torch.")
            args = ("cuda", self._dev.index, ONNX_ELEM[dtype], tuple(buf.shape), buf.data_ptr())
        else:
            args = ("cpu", 0, ONNX_ELEM[str(buf.dtype)], buf.shape, buf.ctypes.data)
        (binding.bind_output if output else binding.bind_input)(name, *args)

    def _bind_common(self, binding, seq: int) -> None:
        for (past, present), buf in zip(self._kv_names, self._kv):
            self._bind(binding, past, buf)
            self._bind(binding, present, buf, output=True)
        self._bind(binding, "logits", self._logits, output=True)
        self._bind(binding, "next_token", self._token, output=True)
        self._bind(binding, "hidden_states", self._hidden[: seq * self.hidden_size].reshape(1, seq, self.hidden_size),
                   output=True)

    def _prefill_binding(self, x: Any, total: int):
        binding = self.session.io_binding()
        self._bind(binding, "inputs_embeds", x)
        self._bind(binding, "attention_mask", self._mask[:, :total])
        self._bind_common(binding, int(x.shape[1]))
        self._keep = x  # bound by address: alive until the run returns
        return binding

    def _decode(self, x: Any):
        """Copy the row into the static embedding buffer; the binding (all static addresses) is built once."""
        if self.on_cuda:
            self._embed1.copy_(x)
        else:
            self._embed1[...] = x
        if self._decode_binding is None:
            binding = self.session.io_binding()
            self._bind(binding, "inputs_embeds", self._embed1)
            self._bind(binding, "attention_mask", self._mask)
            self._bind_common(binding, 1)
            self._decode_binding = binding
        return self._decode_binding

    def close(self) -> None:
        self.session = self._decode_binding = None
