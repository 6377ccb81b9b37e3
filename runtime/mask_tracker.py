"""SAM2-style mask propagation through the four mask engines, over a fixed ring-buffer :class:`MemoryBank`.

Engines (manifest components; ``B`` = objects = 1 here, ``S`` = mask image size, ``C`` hidden, ``Cm`` memory
width, ``HW = (S/16)^2``, ``s = S/4``, ``M`` = memory slots, ``P`` = pointer slots):

=========================  ===========================================================================
``mask_image_encoder``     pixels ``[n, 3, S, S]`` (0..255) -> feat_s0, feat_s1, embedding ``[n, HW, C]``,
                           embedding_pos
``mask_prompt``            task_embedding ``[1, D]`` (+ patch_tokens ``[1, T, P, Dv]``) -> sparse_prompt ``[1, 3, C]``
                           (+ prompt_box ``[1, 4]`` when the decoder takes it: a ``box_mask_prompt`` export)
``mask_memory_attention``  embedding, embedding_pos, memory ``[1, M, HW, Cm]``, memory_pos, memory_offsets
                           ``[1, M]``, memory_valid, pointers ``[1, P, C]``, pointer_offsets, pointer_valid
                           -> conditioned ``[1, HW, C]`` (no valid slot: embedding + no-memory embedding)
``mask_decoder``           feat_s0, feat_s1, conditioned, sparse_prompt ``[1, N, C]`` (+ prompt_box ``[1, 4]``:
                           the prompt's box on the prompted frame, zeros on tracking frames) -> low_res_logits
                           ``[1, 1, s, s]``, iou, object_score_logits ``[1, 1]``, object_pointer ``[1, C]``
``mask_memory_encoder``    embedding, low_res_logits, object_score_logits -> memory, memory_pos ``[1, HW, Cm]``
=========================  ===========================================================================

Memory-bank contract: ``runtime.contract.memory`` (the same ``RingSlots`` the reference's ``MaskMemoryBank``
uses): slot 0 holds the prompted frame, the other slots a ring of the most recent frames; empty slots are
``valid = False`` and masked out inside the graph. Buffers are allocated once: memory is constant however long
the stream runs (``MemoryBank.nbytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.contract.memory import RingSlots
from runtime.manifest import MaskSpec


class MemoryBank:
    """Fixed-capacity ring buffer of one object's memories (device arrays through ``ops``); the slot policy is the
    contract's :class:`~runtime.contract.memory.RingSlots`."""

    def __init__(self, num_maskmem: int, num_pointers: int, hw: int, mem_dim: int, hidden_dim: int, dtype: str, ops):
        self.slots = RingSlots(num_maskmem, num_pointers)
        self.ops = ops
        self.memory = ops.zeros((1, num_maskmem, hw, mem_dim), dtype)
        self.memory_pos = ops.zeros((1, num_maskmem, hw, mem_dim), dtype)
        self.pointers = ops.zeros((1, num_pointers, hidden_dim), dtype)

    @property
    def nbytes(self) -> int:
        return sum(self.ops.nbytes(a) for a in (self.memory, self.memory_pos, self.pointers))

    def reset(self) -> None:
        """Empty every slot (buffers are kept; stale contents are masked by ``valid``)."""
        self.slots.reset()

    def add(self, frame_idx: int, memory: Any, memory_pos: Any, pointer: Any, conditioning: bool) -> None:
        """Store one frame: memory / memory_pos ``[1, HW, Cm]``, pointer ``[1, C]``."""
        ms, ps = self.slots.add(frame_idx, conditioning)
        if ms is not None:
            self.memory[0, ms] = memory[0]
            self.memory_pos[0, ms] = memory_pos[0]
        if ps is not None:
            self.pointers[0, ps] = pointer[0]

    def feeds(self, frame_idx: int) -> dict[str, Any]:
        """The memory-attention inputs as seen from ``frame_idx`` (fixed shapes)."""
        moff, mvalid, poff, pvalid = self.slots.offsets(frame_idx)
        o = self.ops
        return {"memory": self.memory, "memory_pos": self.memory_pos, "memory_offsets": o.asarray(moff[None]),
                "memory_valid": o.asarray(mvalid[None]), "pointers": self.pointers,
                "pointer_offsets": o.asarray(poff[None]), "pointer_valid": o.asarray(pvalid[None])}


@dataclass
class MaskPrompt:
    """What starts a track: the SAM2 sparse prompt ``[1, 3, C]`` and, for an export whose decoder takes it, the
    prompt box ``[1, 4]`` (normalized xyxy; else None). Device arrays, from :meth:`MaskTracker.prompt`."""

    sparse: Any
    box: Any = None


@dataclass
class FrameMask:
    """One tracked frame, as device arrays: low-res logits ``[1, s, s]``, the object score logit ``[1]`` and the
    predicted IoU ``[1]``. Nothing is read back to the host until asked: :attr:`object_score` / :attr:`iou` are
    host floats (each a device sync), and ``score_logits`` feeds ``decode_masks`` on the device."""

    low_res_logits: Any
    score_logits: Any
    iou_pred: Any
    ops: Any

    @property
    def object_score(self) -> float:
        return float(self.ops.to_host(self.score_logits).reshape(-1)[0])

    @property
    def iou(self) -> float:
        return float(self.ops.to_host(self.iou_pred).reshape(-1)[0])


class MaskTracker:
    """Per-frame propagation of one object: :meth:`start` with a :class:`MaskPrompt`, then :meth:`step` per frame.

    Args:
        engines: name -> opened engine for the five mask components.
        mask: the manifest's ``mask`` section (``memory_capacity``, ``pointer_capacity``).
        no_prompt: ``[2, C]`` sparse prompt of tracking frames (manifest tensor ``mask_no_prompt``).
        ops: the pipeline's array ops. dtype: the graphs' float dtype.
    """

    def __init__(self, engines: dict, mask: MaskSpec, no_prompt: Any, ops, dtype: str):
        self.engines, self.ops, self.dtype = engines, ops, dtype
        mem = engines["mask_memory_attention"].spec
        m_shape = next(s for s in mem.inputs if s.name == "memory").dims
        p_shape = next(s for s in mem.inputs if s.name == "pointers").dims
        _, num_maskmem, hw, mem_dim = m_shape
        _, num_pointers, hidden = p_shape
        if (mask.memory_capacity, mask.pointer_capacity) != (int(num_maskmem), int(num_pointers)):
            raise ValueError(f"manifest mask.memory_capacity / pointer_capacity = {mask.memory_capacity} / "
                             f"{mask.pointer_capacity} but mask_memory_attention's inputs have {num_maskmem} / "
                             f"{num_pointers} slots; re-export so they agree")
        self.bank = MemoryBank(int(num_maskmem), int(num_pointers), int(hw), int(mem_dim), int(hidden), dtype, ops)
        self.no_prompt = ops.cast(no_prompt, dtype)[None]
        self.takes_box = any(t.name == "prompt_box" for t in engines["mask_decoder"].spec.inputs)
        self.no_box = ops.zeros((1, 4), dtype)  # an empty box: no mask prompt on tracking frames
        self.image_batch = engines["mask_image_encoder"].spec.max_dim("images")
        self._prompt: MaskPrompt | None = None
        self._frame = 0

    def prompt(self, task_embedding: Any, patch_tokens: Any = None) -> MaskPrompt:
        """task embedding ``[D]`` (+ the vision graph's ``patch_tokens [1, T, P, Dv]`` when ``mask_prompt`` takes
        them: a pointer-head export) -> :class:`MaskPrompt` (sparse prompt ``[1, 3, C]``, the box ``[1, 4]`` when
        the decoder takes it)."""
        eng = self.engines["mask_prompt"] if "mask_prompt" in self.engines else None
        if eng is None:
            raise ValueError("the manifest has no mask_prompt component, so a <track_begin> cannot become a SAM2 "
                             "prompt; re-export with `tpo export` (it writes mask_prompt)")
        feeds = {"task_embedding": self.ops.cast(task_embedding, self.dtype)[None]}
        if any(t.name == "patch_tokens" for t in eng.spec.inputs):
            if patch_tokens is None:
                raise ValueError("this export's mask_prompt reads the vision patch tokens (a pointer-head model): "
                                 "pass patch_tokens [1, T, P, Dv], the vision engine's patch_tokens output")
            feeds["patch_tokens"] = self.ops.cast(patch_tokens, self.dtype)
        out = eng.run(feeds)
        if self.takes_box and "prompt_box" not in out:
            raise ValueError("this export's mask_decoder takes prompt_box but its mask_prompt gives none; re-export "
                             "with `tpo export` so the two graphs come from one model")
        return MaskPrompt(out["sparse_prompt"], out.get("prompt_box") if self.takes_box else None)

    def start(self, prompt: MaskPrompt) -> None:
        """Begin a new track: the next :meth:`step` is the conditioning frame, prompted with ``prompt``."""
        if not isinstance(prompt, MaskPrompt):
            raise TypeError(f"MaskTracker.start takes the MaskPrompt of MaskTracker.prompt(), got "
                            f"{type(prompt).__name__}")
        if self.takes_box and prompt.box is None:
            raise ValueError("this export's mask_decoder takes the prompt box: start the track with "
                             "MaskTracker.prompt(...), which gives it")
        self.bank.reset()
        self._prompt, self._frame = prompt, 0

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
            raise RuntimeError("MaskTracker.step before start(); give it a MaskPrompt first")
        t = self._frame
        cond = self.engines["mask_memory_attention"].run(
            {"embedding": features["embedding"], "embedding_pos": features["embedding_pos"], **self.bank.feeds(t)}
        )["conditioned"]
        feeds = {"feat_s0": features["feat_s0"], "feat_s1": features["feat_s1"], "conditioned": cond,
                 "sparse_prompt": self._prompt.sparse if t == 0 else self.no_prompt}
        if self.takes_box:
            feeds["prompt_box"] = self._prompt.box if t == 0 else self.no_box
        dec = self.engines["mask_decoder"].run(feeds)
        if write_memory:
            mem = self.engines["mask_memory_encoder"].run(
                {"embedding": features["embedding"], "low_res_logits": dec["low_res_logits"],
                 "object_score_logits": dec["object_score_logits"]})
            self.bank.add(t, mem["memory"], mem["memory_pos"], dec["object_pointer"], conditioning=t == 0)
        self._frame += 1
        # no host read here: the scores stay on the device until a caller asks (FrameMask)
        return FrameMask(dec["low_res_logits"][:, 0], dec["object_score_logits"].reshape(-1),
                         dec["iou"].reshape(-1), self.ops)

    def track(self, pixels: Any, prompt: MaskPrompt) -> list[FrameMask]:
        """Whole clip: pixels ``[T, 3, S, S]``; frame 0 is prompted -> T :class:`FrameMask`."""
        self.start(prompt)
        feats = self.encode_images(pixels)
        last = len(feats) - 1
        return [self.step(f, write_memory=i < last) for i, f in enumerate(feats)]
