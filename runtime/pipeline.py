"""The runtime pipeline: manifest -> engines -> ``ask`` (and ``stream``), with task-token routing to the heads.

    >>> pipe = Pipeline.from_manifest("exports/tiny", backend="ort", device="cpu")
    >>> res = pipe.ask("clip.mp4", "Where is the red circle?")
    >>> res.text, res.region.box, res.timings_ms

Stages of ``ask`` (timed in ``timings_ms``; on CUDA each clock is read after a device sync):

1. ``read``: frames -- a video file is sampled (middle-of-segment, ``preprocess.num_frames``) with decord.
2. ``preprocess``: numpy bicubic resize to the vision size (0..255, the graph normalizes).
3. ``vision``: ``vision`` engine -> visual tokens ``[1, Nq, D]`` + frame features ``[1, T, Dv]`` (+ patch tokens
   ``[1, T, P, Dv]`` for a pointer-head export: ``head_region`` and ``mask_prompt`` then take them as an input;
   they stay where the engine wrote them, on the device on CUDA).
4. ``prefill``: prompt ids (BOS per chunk) -> embedding rows gathered from ``embed_tokens.npy`` with the visual
   tokens spliced after the first chunk -> ``llm`` engine over a preallocated :class:`KVCache`.
5. ``decode``: greedy / top-p with stop tokens; a ``*_begin`` token routes to its head (see
   :mod:`runtime.generator`): ``head_region`` (normalized xyxy x (W, H), ordered, clamped), ``head_temporal``
   (softmax foreground score, (cx, w) -> seconds, clamped, rounded, sorted), mask (``mask_prompt`` + SAM2
   tracking through the four mask engines with a ring-buffer memory bank, then fused ``decode_masks`` to the
   video resolution).

Nothing here imports torch on the CPU path; CUDA arrays are torch tensors.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import engines as _engines
from runtime.contract.postprocess import box_to_pixels, boxes_to_normalized, spans_to_seconds
from runtime.contract.routing import Router, Sampler, TaskRoute
from runtime.engines import open_engine
from runtime.generator import make_generator
from runtime.manifest import Manifest
from runtime.mask_decode import decode_masks
from runtime.mask_tracker import MaskTracker
from runtime.ops import NumpyOps, TorchOps
from runtime.preprocess import Preprocessor, check_frames
from runtime.results import MaskResult, RegionResult, Span, TemporalResult, TPOResult, boxes_from_decoded
from runtime.tokenizer import open_tokenizer
from runtime.video_gpu import DeviceClip, read_clip_cuda
from runtime.video_io import MAX_SIDE, Clip, clip_from_frames, read_clip

MASK_COMPONENTS = ("mask_image_encoder", "mask_prompt", "mask_memory_attention", "mask_decoder",
                   "mask_memory_encoder")
CORE_COMPONENTS = ("vision", "llm", "head_region", "head_temporal")
OPTIONAL_COMPONENTS = ("loc_encoder",)  # <track_box> box prompts


class Pipeline:
    """All engines of one export folder plus the runtime state (KV cache, mask tracker, tokenizer).

    Use :meth:`from_manifest`. ``engines`` maps component name -> opened engine.
    """

    def __init__(self, manifest: Manifest, backend: str = "ort", device: str = "cpu", threads: int | None = None,
                 cuda_graphs: bool = True):
        if backend not in ("ort", "tensorrt"):
            raise ValueError(f"backend {backend!r} is not allowed; choose 'ort' or 'tensorrt'")
        if backend == "tensorrt" and not device.startswith("cuda"):
            raise ValueError("backend='tensorrt' runs on CUDA only; pass device='cuda' (or backend='ort' for the CPU)")
        _engines.check_device(backend, device)  # no CUDA device / no CUDA EP: a ValueError before anything opens
        self.manifest, self.backend, self.device = manifest, backend, device
        self.ops = NumpyOps() if device == "cpu" else TorchOps(device)
        opts = {"threads": threads} if backend == "ort" and threads else {}
        if backend == "tensorrt":
            opts["synchronize"] = True
        names = [n for n in CORE_COMPONENTS + MASK_COMPONENTS + OPTIONAL_COMPONENTS if n in manifest.components
                 and not (n == "llm" and manifest.kv.graph == "gqa")]  # the GQA graph is driven by OrtLLM
        self.cuda_graphs = bool(cuda_graphs and backend == "ort" and device.startswith("cuda"))
        self.engines = {n: self._open(n, opts) for n in names}
        self.dtype = self._input_dtype("llm", "inputs_embeds")
        self._load_tensors()
        self.tokenizer = open_tokenizer(manifest)
        pp, mk = manifest.preprocess, manifest.mask
        self.num_frames = pp.num_frames
        self.preprocessor = Preprocessor(size=pp.size, mean=pp.mean, std=pp.std, resize=pp.resize,
                                         mask_size=mk.image_size,
                                         mask_resize="bilinear_aa" if mk.antialias else "bilinear")
        self.device_pre = self._device_preprocessor() if device != "cpu" else None
        self.routes = self._routes()
        self.banned_ids = [t.id for t in manifest.task_tokens.values() if t.role == "input"]
        self.generator = make_generator(manifest, self.engines, self.tensors["embed_tokens"], self.ops,
                                        {r.placeholder_id: r.embedding for r in self.routes.values()}, threads)
        self.max_new_tokens = manifest.generation.max_new_tokens
        self.stop_ids = manifest.generation.stop_ids
        self.round_to_s = manifest.heads.temporal.round_to_s
        self.box_id = next((t.id for t in manifest.task_tokens.values() if t.role == "input"), None)
        self._lock = threading.RLock()  # one request at a time on the shared KV cache (a stream asks from a thread)
        self.tracker = None
        if all(n in self.engines for n in MASK_COMPONENTS[2:]) and "mask_image_encoder" in self.engines:
            self.tracker = MaskTracker(self.engines, manifest.mask, self.tensors["mask_no_prompt"], self.ops,
                                       self._input_dtype("mask_decoder", "conditioned"))

    @classmethod
    def from_manifest(cls, folder: str | Path, backend: str = "ort", device: str = "cpu", threads: int | None = None,
                      verify_hashes: bool = True, cuda_graphs: bool = True) -> Pipeline:
        """Load ``folder/manifest.json`` (validated, hashes checked) and open every engine."""
        return cls(Manifest.load(folder, verify_hashes=verify_hashes), backend, device, threads, cuda_graphs)

    # ------------------------------------------------------------------------------------------- setup
    def _open(self, name: str, opts: dict):
        """One engine; on ORT CUDA with ``cuda_graphs`` the fixed-shape components (all but a plain LLM graph) run
        from CUDA graphs where ORT allows (:mod:`runtime.engines.ort_graph`; ``graph_status`` says which)."""
        if self.cuda_graphs and name != "llm":
            from runtime.engines.ort_graph import GraphedOrtEngine

            return GraphedOrtEngine(name, self.manifest.components[name], self.manifest.root, self.device, **opts)
        return open_engine(self.manifest, name, backend=self.backend, device=self.device, **opts)

    @property
    def graph_status(self) -> dict[str, dict[str, str]]:
        """Per engine run under CUDA graphs: ``{input shapes: "cuda graph" | "plain: <reason>"}`` (empty until run)."""
        return {n: dict(e.status) for n, e in self.engines.items() if hasattr(e, "status")}

    def _device_preprocessor(self):
        """The fused Triton preprocessing on this CUDA device (``runtime.kernels.preprocess_triton``)."""
        from runtime.kernels.preprocess_triton import DevicePreprocessor

        torch = self.ops.torch
        return DevicePreprocessor(self.preprocessor, getattr(torch, self._input_dtype("vision", "frames")),
                                  getattr(torch, self._input_dtype("mask_image_encoder", "pixels"))
                                  if "mask_image_encoder" in self.manifest.components else torch.float32)

    def _input_dtype(self, component: str, name: str) -> str:
        return self.manifest.components[component].input(name).dtype

    def _load_tensors(self) -> None:
        self.tensors: dict[str, Any] = {}
        for name, info in self.manifest.tensors.items():
            arr = np.load(self.manifest.path_of(info.file), allow_pickle=False)
            if tuple(arr.shape) != info.shape:
                raise ValueError(f"tensor {name}: file {info.file} has shape {list(arr.shape)}, the manifest says "
                                 f"{list(info.shape)}; re-export with `tpo export`")
            if info.dtype == "bfloat16":  # stored as its uint16 bit pattern
                if self.device == "cpu":
                    raise ValueError(f"tensor {name} is bfloat16, which the CPU runtime cannot use; export with "
                                     "--precision fp32 (or fp16) for the CPU, or run on device='cuda'")
                self.tensors[name] = self.ops.torch.from_numpy(arr.view(np.int16)).view(
                    self.ops.torch.bfloat16).to(self.device)
                continue
            self.tensors[name] = self.ops.asarray(arr, self.dtype if arr.dtype.kind == "f" else None)
        for need in ("embed_tokens", "mask_no_prompt"):
            if need not in self.tensors:
                raise ValueError(f"the manifest has no tensor {need!r}; re-export with `tpo export`")

    def _routes(self) -> dict[int, TaskRoute]:
        """``*_begin`` id -> route, from the manifest's task_tokens (begin -> placeholder -> embedding tensor)."""
        tt = self.manifest.task_tokens
        return {t.id: TaskRoute(t.id, t.placeholder_id, self.tensors[tt[t.placeholder].embedding], t.head)
                for t in tt.values() if t.role == "begin"}

    def close(self) -> None:
        for eng in self.engines.values():
            eng.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- ask
    def load_clip(self, video: Any, fps: float | None = None) -> Clip:
        """A path, a :class:`Clip` (or any object with frames/timestamps/duration/width/height), or a uint8
        ``[N, H, W, 3]`` array of consecutive frames at ``fps`` (default 1.0) -> the sampled Clip.

        On CUDA a path is decoded into device memory (``runtime.video_gpu.read_clip_cuda``: NVDEC where
        PyNvVideoCodec works, else decord + one upload; the clip's ``decoder`` and ``notes`` say which ran).
        """
        if isinstance(video, (str, Path)):
            if self.device_pre is not None:
                # NVDEC is opt-in (read_clip_cuda(decoder="nvdec" | "auto")): PyNvVideoCodec 2.2.4's SimpleDecoder
                # segfaulted on some H.264 test clips on the H200 (not diagnosed); decord + one upload is the default
                return read_clip_cuda(video, self.num_frames, self.device, decoder="decord")
            return read_clip(video, self.num_frames, MAX_SIDE)
        if isinstance(video, (Clip, DeviceClip)):
            return video
        if all(hasattr(video, a) for a in ("frames", "timestamps", "duration", "width", "height")):
            return Clip(np.asarray(video.frames), np.asarray(video.timestamps, np.float64), float(video.duration),
                        int(video.width), int(video.height), float(getattr(video, "fps", 0.0) or 0.0))
        if isinstance(video, np.ndarray):
            return clip_from_frames(video, self.num_frames, fps or 1.0)
        raise ValueError(f"video must be a file path, a Clip or a uint8 [N, H, W, 3] array, got {type(video).__name__}")

    def ask(self, video: Any, prompt: str, max_new_tokens: int | None = None, do_sample: bool = False,
            top_p: float = 0.9, temperature: float = 1.0, seed: int = 0, logits_processor=None,
            fps: float | None = None, track_mask: bool = True, boxes=None) -> TPOResult:
        """Answer ``prompt`` about ``video`` -> :class:`TPOResult` (text, ids, region / temporal / mask, timings).

        ``logits_processor``: optional ``f(step, logits [V]) -> logits`` applied before each choice (the same
        hook as ``TPOModel.generate``; gets a torch tensor when torch is installed, else numpy).
        ``track_mask``: False stops the mask head at its SAM2 prompt (``result.mask_prompt``), for streams that
        track frame by frame themselves.
        ``boxes``: box prompts, a list of ``(x0, y0, x1, y1)`` in pixels of the video, one per ``<track_box>`` slot
        of the prompt (appended after the question when it has none); embedded by the ``loc_encoder`` graph.
        Thread-safe: requests run one at a time (the KV cache is shared).
        """
        with self._lock:
            return self._ask(video, prompt, max_new_tokens, do_sample, top_p, temperature, seed, logits_processor,
                             fps, track_mask, boxes)

    def check_prompt(self, prompt: str, num_boxes: int = 0, max_new_tokens: int | None = None, times_s=None) -> None:
        """Run the prompt guard without a video (what a stream does before its first frame): ValueError naming the
        problem (UTF-8, empty, control tokens, box slots, KV capacity with ``max_new_tokens``)."""
        times = np.zeros(self.num_frames) if times_s is None else times_s
        self.tokenizer.build(prompt, times, num_boxes=num_boxes, max_new_tokens=int(max_new_tokens or
                                                                                   self.max_new_tokens))

    def _ask(self, video, prompt, max_new_tokens, do_sample, top_p, temperature, seed, logits_processor, fps,
             track_mask, boxes) -> TPOResult:
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        clip = self.load_clip(video, fps)
        timings["read_ms"] = (time.perf_counter() - t_all) * 1e3
        if clip.frames.shape[0] != self.num_frames:
            raise ValueError(f"the clip has {clip.frames.shape[0]} frames; the vision engine takes {self.num_frames}")
        max_new = int(max_new_tokens or self.max_new_tokens)
        box_norm = self._box_prompts(boxes, clip)
        ids = self.tokenizer.build(prompt, clip.timestamps, num_boxes=len(box_norm), max_new_tokens=max_new)
        self.generator.reset()
        self.generator.check_fits(ids.prompt_len, max_new)
        router = Router(self.routes, self.stop_ids, self.banned_ids, Sampler(do_sample, top_p, temperature, seed),
                        logits_processor)
        visual, frame_feats, patches = self._vision(clip, timings)
        t0 = time.perf_counter()
        pre, post = self._embed_prompt(ids.pre, ids.post, box_norm)
        embeds = self.ops.concat([pre, self.ops.cast(visual, self.dtype), post], axis=1)
        logits, _ = self.generator.append(embeds)
        self.ops.sync()
        timings["prefill_ms"] = (time.perf_counter() - t0) * 1e3
        result = TPOResult(text="", token_ids=[], notes=list(clip.notes),
                           video={"width": clip.width, "height": clip.height, "duration": clip.duration,
                                  "fps": clip.fps, "timestamps": np.asarray(clip.timestamps).tolist()})

        def on_task(head: str, hidden: Any) -> None:
            self._run_head(head, hidden, clip, (frame_feats, patches), result, timings, track_mask)

        out = router.decode(logits, max_new, self.generator.feed_token, self.generator.feed_embedding, on_task,
                            sync=self.ops.sync)
        timings.update(out.timings_ms)
        timings["decode_tokens"] = float(out.steps)
        timings["total_ms"] = (time.perf_counter() - t_all) * 1e3
        result.token_ids, result.tasks, result.timings_ms = out.token_ids, out.tasks, timings
        result.text = self.tokenizer.decode(out.token_ids)
        return result

    def _box_prompts(self, boxes, clip: Clip) -> np.ndarray:
        """Pixel boxes -> normalized float32 ``[K, 4]`` (``K = 0`` without boxes); the export must have loc_encoder."""
        if boxes is None or (hasattr(boxes, "__len__") and not isinstance(boxes, str) and len(boxes) == 0):
            return np.zeros((0, 4), np.float32)
        if "loc_encoder" not in self.engines or self.box_id is None:
            raise ValueError("this export has no loc_encoder graph, so it cannot take box prompts; re-export with "
                             "`tpo export` (it writes loc_encoder)")
        limit = self.manifest.components["loc_encoder"].max_dim("boxes")
        return boxes_to_normalized(boxes, clip.width, clip.height, max_boxes=limit)

    def _embed_prompt(self, pre: list[int], post: list[int], box_norm: np.ndarray) -> tuple[Any, Any]:
        """Prompt ids -> input embeddings ``[1, len, D]`` (pre, post); ``<track_box>`` rows, in reading order over
        pre then post (as ``TaskLLM.embed``), get ``loc_encoder(box)``."""
        pre_e, post_e = self.generator.embed_ids(pre), self.generator.embed_ids(post)
        if len(box_norm) == 0:
            return pre_e, post_e
        emb = self.engines["loc_encoder"].run({"boxes": self.ops.asarray(box_norm, "float32")})["embeddings"]
        emb = self.ops.cast(emb, self.dtype)
        k = 0
        for part, ids in ((pre_e, pre), (post_e, post)):
            for i, tok in enumerate(ids):
                if tok == self.box_id:
                    part[0, i] = emb[k]
                    k += 1
        assert k == len(box_norm), f"{k} <track_box> slots for {len(box_norm)} boxes (the encoder checks this)"
        return pre_e, post_e

    def _vision(self, clip: Clip, timings: dict) -> tuple[Any, Any, Any]:
        """-> (visual_tokens [1, Nv, D], frame_features [1, T, Dv], patch_tokens [1, T, P, Dv] or None)."""
        t0 = time.perf_counter()
        frames = self.ops.asarray(self._vision_input(clip.frames), self._input_dtype("vision", "frames"))
        self.ops.sync()
        timings["preprocess_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        out = self.engines["vision"].run({"frames": frames})
        self.ops.sync()
        timings["vision_ms"] = (time.perf_counter() - t0) * 1e3
        return out["visual_tokens"], out["frame_features"], out.get("patch_tokens")

    def _vision_input(self, frames: Any) -> Any:
        """uint8 ``[T, H, W, 3]`` -> ``[1, T, 3, S, S]`` resized, clamped, 0..255 (the graph normalizes): the fused
        Triton kernel on CUDA (host frames are uploaded as uint8 first), numpy on the CPU."""
        if self.device_pre is None:
            return self.preprocessor.vision(frames)
        return self.device_pre.vision(self._device_frames(frames))

    def mask_pixels(self, frames: Any) -> Any:
        """uint8 ``[T, H, W, 3]`` -> ``[T, 3, Sm, Sm]`` (bilinear antialias, 0..255; the graph normalizes), on the
        device on CUDA."""
        if self.device_pre is None:
            return self.preprocessor.mask(frames)
        return self.device_pre.mask(self._device_frames(frames))

    def _device_frames(self, frames: Any) -> Any:
        if isinstance(frames, np.ndarray):
            check_frames(frames)
            return self.ops.torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, non_blocking=True)
        return frames

    # ------------------------------------------------------------------------------------------- heads
    def head_feeds(self, component: str, h: Any, patch_tokens: Any = None) -> dict[str, Any]:
        """Feeds of ``head_region``: ``task_embedding [1, D]``, plus ``patch_tokens [1, T, P, Dv]`` (the vision
        engine's output) when the graph takes them (a pointer-head export)."""
        feeds = {"task_embedding": h}
        if any(t.name == "patch_tokens" for t in self.manifest.components[component].inputs):
            if patch_tokens is None:
                raise ValueError(f"this export's {component} reads the vision patch tokens (a pointer-head model) "
                                 "but the vision engine gave none; re-export the model with `tpo export`")
            feeds["patch_tokens"] = self.ops.cast(patch_tokens, self._input_dtype(component, "patch_tokens"))
        return feeds

    def _run_head(self, head: str, hidden: Any, clip: Clip, features: tuple, result: TPOResult,
                  timings: dict, track_mask: bool = True) -> None:
        """hidden ``[D]``: the final-layer hidden state at the placeholder -> post-processed head output.

        features: (frame_features ``[1, T, Dv]``, patch_tokens ``[1, T, P, Dv]`` or None) from the vision engine."""
        frame_feats, patches = features
        if head in self.manifest.heads.untrained:
            raise ValueError(f"the model routed this request to the {head} head, which this export has no trained "
                             f"weights for (manifest heads.untrained); train that head on the checkpoint and "
                             "re-export (docs/convert.md, 'Temporal task'), or ask a question that does not need it")
        h = self.ops.cast(hidden, self._input_dtype("head_region", "task_embedding"))[None]
        if head == "region":
            out = self.engines["head_region"].run(self.head_feeds("head_region", h, patches))
            norm = self.ops.to_host(out["box"])[0]
            result.region = RegionResult(box=box_to_pixels(norm, clip.width, clip.height),
                                         box_normalized=tuple(float(v) for v in norm))
        elif head == "temporal":
            result.temporal = self._temporal(h, clip, frame_feats)
        elif head == "mask" and not track_mask:
            result.mask_prompt = self._tracker().prompt(hidden, patches)
        elif head == "mask":
            result.mask = self._mask(hidden, clip, timings, patches)
        else:
            raise ValueError(f"the manifest routes to head {head!r}; this runtime knows region, temporal, mask")

    def _temporal(self, h: Any, clip: Clip, frame_feats: Any) -> TemporalResult:
        n = int(frame_feats.shape[1])
        times = np.asarray(clip.timestamps[:n], np.float64) / max(clip.duration, 1e-6)
        feeds = {"task_embedding": h, "frame_features": frame_feats,
                 "frame_times": self.ops.asarray(times[None].astype(np.float32)),
                 "frame_mask": self.ops.asarray(np.ones((1, n), bool))}
        out = {k: self.ops.to_host(v) for k, v in self.engines["head_temporal"].run(feeds).items()}
        windows = spans_to_seconds(out["pred_logits"][0], out["pred_spans"][0], clip.duration, self.round_to_s)
        return TemporalResult(spans=[Span(s, e, p) for s, e, p in windows],
                              saliency=out["saliency"][0].astype(np.float32),
                              saliency_times=np.asarray(clip.timestamps[:n], np.float32))

    def _tracker(self) -> MaskTracker:
        if self.tracker is None:
            raise ValueError("the model routed to the mask head but the manifest has no mask engines; re-export "
                             "with the mask components")
        return self.tracker

    def new_tracker(self) -> MaskTracker:
        """A separate tracker (own memory bank) over the same engines, e.g. for a stream."""
        self._tracker()
        return MaskTracker(self.engines, self.manifest.mask, self.tensors["mask_no_prompt"], self.ops,
                           self._input_dtype("mask_decoder", "conditioned"))

    def _mask(self, hidden: Any, clip: Clip, timings: dict, patches: Any = None) -> MaskResult:
        tracker = self._tracker()
        t0 = time.perf_counter()
        pixels = self.ops.asarray(self.mask_pixels(clip.frames), self._input_dtype("mask_image_encoder", "pixels"))
        tracked = tracker.track(pixels, tracker.prompt(hidden, patches))
        self.ops.sync()
        timings["mask_track_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        h, w = int(clip.frames.shape[1]), int(clip.frames.shape[2])
        logits = self.ops.concat([f.low_res_logits for f in tracked], axis=0)
        score_logits = self.ops.cast(self.ops.concat([f.score_logits for f in tracked], axis=0), "float32")
        dec = decode_masks(logits, (h, w), score_logits).to_numpy()  # one read-back, at the end
        scores = np.asarray(self.ops.to_host(score_logits), np.float32)
        timings["mask_decode_ms"] = (time.perf_counter() - t0) * 1e3
        return MaskResult(bits=dec.bits, height=h, width=w, timestamps=np.asarray(clip.timestamps, np.float32),
                          object_scores=scores, boxes=boxes_from_decoded(dec.boxes), areas=dec.areas)

    # ---------------------------------------------------------------------------------------- streaming
    def stream(self, source: Any, prompt: str, **kwargs):
        """Per-frame results as frames arrive; see :class:`runtime.stream.Stream` for the arguments."""
        from runtime.stream import Stream

        return Stream(self, source, prompt, **kwargs)
