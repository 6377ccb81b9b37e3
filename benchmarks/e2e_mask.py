"""One tracked mask frame at video resolution: tpo-edge's mask engines vs transformers' ``Sam2VideoModel`` eager.

Used by ``benchmarks/e2e_7b.py`` (its docstring has the commands). Both sides track one object through the same
stream of uint8 video frames (``[H, W, 3]``, on the device when CUDA) and are timed per frame in **steady state**:
the first ``fill`` frames (prompted frame + enough frames to fill every memory slot and every object-pointer slot)
are run untimed, then each of ``reps`` further frames is timed stage by stage (host clock read after a device
synchronization at every stage boundary; the frame total is the sum of its stages; medians over frames).

Ours (``Pipeline`` engines, the export's precision, ORT): ``preprocess`` (uint8 frame -> ``[1, 3, S, S]``
pixels, ``Pipeline.mask_pixels``: the fused Triton kernel on CUDA, numpy on the CPU), ``image_encoder``
(``mask_image_encoder``), ``track`` (``MaskTracker.step``: ``mask_memory_attention`` over the full ring buffer
+ ``mask_decoder`` + ``mask_memory_encoder``), ``upsample`` (fused ``decode_masks`` of the low-res logits to
``(H, W)`` bits on the device, object score not used so the work is never skipped).

Peer (``Sam2VideoModel`` of transformers, eager, in ``dtype``; the SAM2 modules of the same ``MaskHead``, so the
same config and weights as the export when the export came from the same random build): transformers' streaming
video API: ``Sam2VideoInferenceSession``, a box prompt on frame 0 through ``Sam2VideoProcessor.
add_inputs_to_inference_session``, then ``model(inference_session=session, frame=pixels)`` per frame.
``preprocess`` (``Sam2VideoProcessor(images=frame, device=...)`` when torchvision is installed, else
``replica``: the same bilinear antialiased resize + rescale + ImageNet normalization in torch on the device),
``model`` (image encoder + memory attention + mask decoder + memory encoder), ``upsample``
(``post_process_masks``: bilinear to ``(H, W)``, > 0, on the device).
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

MAX_POINTERS = 16  # SAM2's object-pointer window (max_object_pointers_in_encoder)
# what a peer run may raise from transformers / torch (out of memory, an API change): recorded, the others go on
PEER_ERRORS = (RuntimeError, ValueError, TypeError, ImportError, AttributeError)


# ------------------------------------------------------------------------------------------------ timing
def stats(ms: list[float]) -> dict:
    """Median and spread of a list of milliseconds."""
    a = np.asarray(ms, np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "min": float(a.min()),
            "max": float(a.max()), "n": int(a.size)}


def make_sync(device: str) -> Callable[[], None]:
    if not device.startswith("cuda"):
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(torch.device(device))


class StageClock:
    """Per-frame stage times: ``with clock.stage(name):`` blocks, synchronized on both sides."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.frames, self._cur = sync, [], None

    def frame(self) -> None:
        self._cur = {}
        self.frames.append(self._cur)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        self._cur[name] = self._cur.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        return out

    def summary(self) -> dict:
        names = list(self.frames[0]) if self.frames else []
        out = {n: stats([f[n] for f in self.frames]) for n in names}
        out["total"] = stats([sum(f.values()) for f in self.frames])
        return out


# ------------------------------------------------------------------------------------------------ ours
def our_mask_frames(pipe, frames: list, fill: int, reps: int, seed: int = 0) -> dict:
    """Steady-state per-frame timing of the runtime's mask engines (see the module docstring).

    frames: uint8 ``[H, W, 3]`` frames (torch CUDA tensors on CUDA, numpy on the CPU), cycled through.
    """
    if pipe.tracker is None:
        raise ValueError("the export has no mask engines; export every component (the mask graphs included)")
    ops, sync = pipe.ops, make_sync(pipe.device)
    tracker = pipe.new_tracker()
    rng = np.random.default_rng(seed)
    task = ops.asarray(rng.standard_normal(pipe.manifest.kv.hidden_size).astype(np.float32) * 0.5)
    prompt_in = pipe.manifest.components["mask_prompt"].inputs
    patches = None  # a pointer-head export's mask_prompt also reads the vision patch tokens: random ones here
    if any(t.name == "patch_tokens" for t in prompt_in):
        dims = next(t.dims for t in prompt_in if t.name == "patch_tokens")[1:]
        patches = ops.asarray(rng.standard_normal((1, *dims)).astype(np.float32))
    tracker.start(tracker.prompt(task, patches))
    px_dtype = pipe._input_dtype("mask_image_encoder", "pixels")
    h, w = int(frames[0].shape[0]), int(frames[0].shape[1])
    on_device = pipe.device_pre is not None

    def preprocess(f):
        return ops.asarray(pipe.mask_pixels(f[None]), px_dtype)

    from runtime.mask_decode import decode_masks

    clock = StageClock(sync)
    for i in range(fill + reps):
        clock.frame()
        f = frames[i % len(frames)]
        px = clock.run("preprocess", lambda f=f: preprocess(f))
        feats = clock.run("image_encoder", lambda px=px: tracker.encode_images(px)[0])
        fm = clock.run("track", lambda feats=feats: tracker.step(feats))
        clock.run("upsample", lambda fm=fm: decode_masks(fm.low_res_logits, (h, w)))
        if i + 1 == fill:
            clock.frames.clear()  # steady state from here
    res = clock.summary()
    res["model"] = stats([f["image_encoder"] + f["track"] for f in clock.frames])
    res["model+upsample"] = stats([f["image_encoder"] + f["track"] + f["upsample"] for f in clock.frames])
    res["precision"] = pipe.manifest.precision
    res["preprocess_path"] = "fused Triton (runtime.kernels.preprocess_triton)" if on_device else "numpy (host)"
    res["memory_slots"] = [pipe.manifest.mask.memory_capacity, pipe.manifest.mask.pointer_capacity]
    return res


def _torch_dtype(name: str):
    import torch

    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[names.get(name, name)]


# ------------------------------------------------------------------------------------------------ peer
def hf_processor(size: int, force_replica: bool = False):
    """(processor, how): transformers' ``Sam2VideoProcessor`` for ``size`` px when its image processor imports (it
    needs torchvision), else a bare instance that only serves ``add_inputs_to_inference_session`` (box coordinates
    scaled to ``size``; no image processing) and ``how`` = ``replica``."""
    from transformers import Sam2VideoProcessor

    if not force_replica:
        try:
            from transformers import Sam2ImageProcessor, Sam2VideoVideoProcessor

            hw = {"height": size, "width": size}
            return Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size=hw),
                                      video_processor=Sam2VideoVideoProcessor(size=hw)), "Sam2VideoProcessor"
        except ImportError:
            pass
    bare = Sam2VideoProcessor.__new__(Sam2VideoProcessor)  # prompt handling reads only these two attributes
    bare.target_size, bare.point_pad_value = size, -10
    return bare, "replica"


class HFSam2Stream:
    """transformers' streaming SAM2 video inference on one object (box prompt on the first frame)."""

    def __init__(self, sam, size: int, dtype, device: str, out_hw: tuple[int, int], force_replica: bool = False):
        import torch
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        self.torch, self.dtype, self.device, self.size, self.out_hw = torch, dtype, torch.device(device), size, out_hw
        self.model = copy.deepcopy(sam).to(self.device, dtype).eval()
        self.processor, self.how = hf_processor(size, force_replica)
        self.session = Sam2VideoInferenceSession(inference_device=self.device, inference_state_device=self.device,
                                                 video_storage_device=self.device, dtype=dtype)
        self.mean = torch.tensor((0.485, 0.456, 0.406), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor((0.229, 0.224, 0.225), device=self.device).view(1, 3, 1, 1)
        self.frames = 0

    def preprocess(self, frame) -> Any:
        """uint8 ``[H, W, 3]`` -> pixel values ``[3, S, S]`` in the session dtype."""
        torch = self.torch
        chw = torch.as_tensor(frame).to(self.device).permute(2, 0, 1)
        if self.how != "replica":
            return self.processor(images=chw, device=self.device, return_tensors="pt").pixel_values[0]
        x = torch.nn.functional.interpolate(chw[None].float(), (self.size, self.size), mode="bilinear",
                                            align_corners=False, antialias=True)
        return ((x / 255.0 - self.mean) / self.std)[0]

    def step(self, pixels) -> Any:
        """One streamed frame through the model -> low-res ``pred_masks`` ``[1, 1, s, s]``."""
        with self.torch.inference_mode():
            if self.frames == 0:
                h, w = self.out_hw
                box = [[[w * 0.25, h * 0.25, w * 0.75, h * 0.75]]]
                self.processor.add_inputs_to_inference_session(self.session, frame_idx=0, obj_ids=1,
                                                               input_boxes=box, original_size=(h, w))
            out = self.model(inference_session=self.session, frame=pixels)
        self.frames += 1
        return out.pred_masks

    def upsample(self, pred_masks) -> Any:
        """``post_process_masks``: bilinear to the video size, > 0 -> bool ``[1, 1, H, W]`` on the device."""
        if self.how != "replica":
            return self.processor.post_process_masks([pred_masks], original_sizes=[list(self.out_hw)])[0]
        up = self.torch.nn.functional.interpolate(pred_masks.float(), self.out_hw, mode="bilinear",
                                                  align_corners=False)
        return up > 0.0


def hf_mask_frames(sam, size: int, frames: list, dtype_name: str, device: str, fill: int, reps: int,
                   force_replica: bool = False) -> dict:
    """Steady-state per-frame timing of transformers' Sam2VideoModel (see the module docstring)."""
    import torch

    dtype = _torch_dtype(dtype_name)
    h, w = int(frames[0].shape[0]), int(frames[0].shape[1])
    peer = HFSam2Stream(sam, size, dtype, device, (h, w), force_replica)
    clock = StageClock(make_sync(device))
    for i in range(fill + reps):
        clock.frame()
        f = frames[i % len(frames)]
        px = clock.run("preprocess", lambda f=f: peer.preprocess(f))
        low = clock.run("model", lambda px=px: peer.step(px))
        clock.run("upsample", lambda low=low: peer.upsample(low))
        if i + 1 == fill:
            clock.frames.clear()
    res = clock.summary()
    res["model+upsample"] = stats([f["model"] + f["upsample"] for f in clock.frames])
    res.update(precision=dtype_name, processor=peer.how,
               tf32={"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})
    return res


def mask_comparison(pipe, sam, frames: list, hf_dtypes: list[str], fill: int, reps: int,
                    force_replica: bool = False) -> dict:
    """Ours + one peer run per dtype; a peer that fails is recorded with its error, the others still run."""
    size = pipe.manifest.mask.image_size
    fill = max(fill, pipe.manifest.mask.memory_capacity, MAX_POINTERS) + 1
    out = {"fill_frames": fill, "timed_frames": reps, "frame_hw": [int(frames[0].shape[0]), int(frames[0].shape[1])],
           "image_size": size, "ours": our_mask_frames(pipe, frames, fill, reps), "hf": {}}
    for name in hf_dtypes:
        try:
            out["hf"][name] = hf_mask_frames(sam, size, frames, name, pipe.device, fill, reps, force_replica)
        except PEER_ERRORS as e:  # one failing peer must not lose the others' numbers; the error is reported
            out["hf"][name] = {"error": f"{type(e).__name__}: {e}"}
        gc.collect()  # the peer's model copy and session
        if pipe.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    return out


def ratio_rows(cmp: dict) -> list[tuple[str, float | None, dict[str, float | None]]]:
    """(row, ours median ms, {hf dtype: median ms}) for model / + upsample / + preprocess."""
    rows = []
    for label, ours_key, hf_key in (("model (1 frame at S px, steady state)", "model", "model"),
                                    ("+ upsample to video resolution", "model+upsample", "model+upsample"),
                                    ("+ preprocess from the uint8 frame", "total", "total")):
        peers = {d: (r[hf_key]["median"] if hf_key in r else None) for d, r in cmp["hf"].items()}
        rows.append((label, cmp["ours"][ours_key]["median"], peers))
    return rows

