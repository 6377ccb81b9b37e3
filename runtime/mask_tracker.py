"""SAM2-style mask propagation through the four mask engines, over a fixed ring-buffer :class:`MemoryBank`.

Engines (manifest components; ``B`` = objects = 1 here, ``S`` = mask image size, ``C`` hidden, ``Cm`` memory
width, ``HW = (S/16)^2``, ``s = S/4``, ``M`` = memory slots, ``P`` = pointer slots):

=========================  ===========================================================================
``mask_image_encoder``     pixels ``[n, 3, S, S]`` (0..255) -> feat_s0, feat_s1, embedding ``[n, HW, C]``,
                           embedding_pos
``mask_prompt``            task_embedding ``[1, D]`` -> sparse_prompt ``[1, 3, C]``
``mask_memory_attention``  embedding, embedding_pos, memory ``[1, M, HW, Cm]``, memory_pos, memory_offsets
                           ``[1, M]``, memory_valid, pointers ``[1, P, C]``, pointer_offsets, pointer_valid
                           -> conditioned ``[1, HW, C]`` (no valid slot: embedding + no-memory embedding)
``mask_decoder``           feat_s0, feat_s1, conditioned, sparse_prompt ``[1, N, C]`` -> low_res_logits
                           ``[1, 1, s, s]``, iou, object_score_logits ``[1, 1]``, object_pointer ``[1, C]``
``mask_memory_encoder``    embedding, low_res_logits, object_score_logits -> memory, memory_pos ``[1, HW, Cm]``
=========================  ===========================================================================

Memory-bank contract (the reference's ``MaskMemoryBank``): spatial slot 0 holds the prompted (conditioning)
frame for the whole track; slots ``1..M-1`` are a ring of the ``M-1`` most recent other frames (round robin,
oldest overwritten). Pointer slot 0 is the prompted frame's pointer, slots ``1..P-1`` a ring of the most recent
ones. Offsets are "frames before the current one" (0 for the conditioning memory slot); empty slots are
``valid = False`` and masked out inside the graph. Buffers are allocated once: memory is constant however long
the stream runs (``MemoryBank.nbytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class MemoryBank:
    """Fixed-capacity ring buffer of one object's memories (device arrays through ``ops``)."""

    def __init__(self, num_maskmem: int, num_pointers: int, hw: int, mem_dim: int, hidden_dim: int, dtype: str, ops):
        if num_maskmem < 1 or num_pointers < 1:
            raise ValueError(f"MemoryBank needs >= 1 memory and pointer slot, got {num_maskmem}, {num_pointers}")
        self.num_maskmem, self.num_pointers, self.ops = num_maskmem, num_pointers, ops
        self.memory = ops.zeros((1, num_maskmem, hw, mem_dim), dtype)
        self.memory_pos = ops.zeros((1, num_maskmem, hw, mem_dim), dtype)
        self.pointers = ops.zeros((1, num_pointers, hidden_dim), dtype)
        self.memory_frame = np.full(num_maskmem, -1, np.int64)
        self.pointer_frame = np.full(num_pointers, -1, np.int64)
        self._writes = 0

    @property
    def nbytes(self) -> int:
        return sum(self.ops.nbytes(a) for a in (self.memory, self.memory_pos, self.pointers))

    def reset(self) -> None:
        """Empty every slot (buffers are kept; stale contents are masked by ``valid``)."""
        self.memory_frame[:] = -1
        self.pointer_frame[:] = -1
        self._writes = 0

    def _slot(self, capacity: int, conditioning: bool) -> int:
        if conditioning or capacity == 1:
            return 0
        return 1 + self._writes % (capacity - 1)

    def add(self, frame_idx: int, memory: Any, memory_pos: Any, pointer: Any, conditioning: bool) -> None:
        """Store one frame: memory / memory_pos ``[1, HW, Cm]``, pointer ``[1, C]``."""
        if conditioning or self.num_maskmem > 1:
            ms = self._slot(self.num_maskmem, conditioning)
            self.memory[0, ms] = memory[0]
            self.memory_pos[0, ms] = memory_pos[0]
            self.memory_frame[ms] = frame_idx
        if conditioning or self.num_pointers > 1:
            ps = self._slot(self.num_pointers, conditioning)
            self.pointers[0, ps] = pointer[0]
            self.pointer_frame[ps] = frame_idx
        if not conditioning:
            self._writes += 1

    def feeds(self, frame_idx: int) -> dict[str, Any]:
        """The memory-attention inputs as seen from ``frame_idx`` (fixed shapes)."""
        mvalid, pvalid = self.memory_frame >= 0, self.pointer_frame >= 0
        moff = np.where(mvalid, frame_idx - self.memory_frame, 0)
        moff[0] = 0  # the conditioning slot always reads temporal position 0
        poff = np.where(pvalid, frame_idx - self.pointer_frame, 0)
        o = self.ops
        return {"memory": self.memory, "memory_pos": self.memory_pos,
                "memory_offsets": o.asarray(moff[None].astype(np.int64)), "memory_valid": o.asarray(mvalid[None]),
                "pointers": self.pointers, "pointer_offsets": o.asarray(poff[None].astype(np.int64)),
                "pointer_valid": o.asarray(pvalid[None])}


@dataclass
class FrameMask:
    """One tracked frame: low-res logits ``[1, s, s]`` (device array), object score logit, predicted IoU."""

    low_res_logits: Any
    object_score: float
    iou: float


class MaskTracker:
    """Per-frame propagation of one object: :meth:`start` with a sparse prompt, then :meth:`step` per frame.

    Args:
        engines: name -> opened engine for the five mask components.
        mask_block: the manifest's ``mask`` block (``memory_capacity`` / ``num_maskmem``, ``num_pointers``).
        no_prompt: ``[2, C]`` sparse prompt of tracking frames (manifest tensor ``mask_no_prompt``).
        ops: the pipeline's array ops. dtype: the graphs' float dtype.
    """

    def __init__(self, engines: dict, mask_block: dict, no_prompt: Any, ops, dtype: str):
        self.engines, self.ops, self.dtype = engines, ops, dtype
        mem = engines["mask_memory_attention"].spec
        m_shape = next(s for s in mem.inputs if s.name == "memory").dims
        p_shape = next(s for s in mem.inputs if s.name == "pointers").dims
        _, num_maskmem, hw, mem_dim = m_shape
        _, num_pointers, hidden = p_shape
        cap = mask_block.get("memory_capacity", mask_block.get("num_maskmem", num_maskmem))
        if int(cap) != int(num_maskmem):
            raise ValueError(f"manifest mask.memory_capacity={cap} but mask_memory_attention's memory input has "
                             f"{num_maskmem} slots; re-export so they agree")
        self.bank = MemoryBank(int(num_maskmem), int(num_pointers), int(hw), int(mem_dim), int(hidden), dtype, ops)
        self.no_prompt = ops.cast(no_prompt, dtype)[None]
        self.image_batch = self._max_dim("mask_image_encoder", "images")
        self._prompt: Any = None
        self._frame = 0

    def _max_dim(self, component: str, dim: str) -> int:
        prof = self.engines[component].spec.profiles
        return max(int(r[dim][2]) for r in prof.values() if dim in r) if prof else 1

    def sparse_prompt(self, task_embedding: Any) -> Any:
        """task embedding ``[D]`` -> sparse prompt ``[1, 3, C]``."""
        eng = self.engines.get("mask_prompt")
        if eng is None:
            raise ValueError("the manifest has no mask_prompt component, so a <track_begin> cannot become a SAM2 "
                             "prompt; re-export with `tpo export` (it writes mask_prompt)")
        return eng.run({"task_embedding": self.ops.cast(task_embedding, self.dtype)[None]})["sparse_prompt"]

    def start(self, sparse_prompt: Any) -> None:
        """Begin a new track: the next :meth:`step` is the conditioning frame, prompted with ``[1, N, C]``."""
        self.bank.reset()
        self._prompt, self._frame = sparse_prompt, 0

    @property
    def active(self) -> bool:
        return self._prompt is not None

    def encode_images(self, pixels: Any) -> list[dict[str, Any]]:
        """pixels ``[n, 3, S, S]`` -> per frame ``{feat_s0, feat_s1, embedding, embedding_pos}`` (batch 1 each)."""
        eng = self.engines["mask_image_encoder"]
        out = []
        for i in range(0, int(pixels.shape[0]), self.image_batch):
            res = eng.run({"pixels": pixels[i:i + self.image_batch]})
            for j in range(int(res["embedding"].shape[0])):
                out.append({k: v[j:j + 1] for k, v in res.items()})
        return out

    def step(self, features: dict[str, Any], write_memory: bool = True) -> FrameMask:
        """Track one frame given its image features (:meth:`encode_images`)."""
        if self._prompt is None:
            raise RuntimeError("MaskTracker.step before start(); give it a sparse prompt first")
        t = self._frame
        cond = self.engines["mask_memory_attention"].run(
            {"embedding": features["embedding"], "embedding_pos": features["embedding_pos"], **self.bank.feeds(t)}
        )["conditioned"]
        prompt = self._prompt if t == 0 else self.no_prompt
        dec = self.engines["mask_decoder"].run({"feat_s0": features["feat_s0"], "feat_s1": features["feat_s1"],
                                                "conditioned": cond, "sparse_prompt": prompt})
        if write_memory:
            mem = self.engines["mask_memory_encoder"].run(
                {"embedding": features["embedding"], "low_res_logits": dec["low_res_logits"],
                 "object_score_logits": dec["object_score_logits"]})
            self.bank.add(t, mem["memory"], mem["memory_pos"], dec["object_pointer"], conditioning=t == 0)
        self._frame += 1
        score = float(self.ops.to_host(dec["object_score_logits"]).reshape(-1)[0])
        iou = float(self.ops.to_host(dec["iou"]).reshape(-1)[0])
        return FrameMask(dec["low_res_logits"][:, 0], score, iou)

    def track(self, pixels: Any, sparse_prompt: Any) -> list[FrameMask]:
        """Whole clip: pixels ``[T, 3, S, S]``; frame 0 is prompted -> T :class:`FrameMask`."""
        self.start(sparse_prompt)
        feats = self.encode_images(pixels)
        last = len(feats) - 1
        return [self.step(f, write_memory=i < last) for i, f in enumerate(feats)]
