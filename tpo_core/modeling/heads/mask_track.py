"""Video propagation for the mask head: a ring-buffer memory bank and ``track`` / ``track_batch``.

The slot policy (which frame sits in which of the ``num_maskmem`` memory and ``MAX_OBJECT_POINTERS`` pointer
slots, and the offsets the memory attention reads) is the inference contract's ``runtime.contract.memory.RingSlots``,
shared with the runtime's device ring buffer: slot 0 holds the conditioning (prompted) frame, the other slots a
ring of the most recent frames; empty slots are ``valid = False`` so shapes never change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from runtime.contract.memory import RingSlots
from tpo_core.modeling.heads.mask import MAX_OBJECT_POINTERS, ImageFeatures, MaskHead, MemoryState


@dataclass
class TrackOutput:
    """Per-frame results of ``track`` (T frames, one object, s = S/4).

    low_res_logits: [T, 1, s, s] selected mask logits (``NO_OBJ_SCORE`` where the object is absent).
    object_score_logits: [T, 1] object-presence logits.
    iou: [T, 1] predicted IoU of the selected masks.
    raw_low_res_logits: [T, 1, s, s] the logits before absent-object gating (pixel losses use these).
    """

    low_res_logits: Tensor
    object_score_logits: Tensor
    iou: Tensor
    raw_low_res_logits: Tensor


class MaskMemoryBank:
    """Ring-buffer memory bank of one video (batch B objects), read as a fixed-shape ``MemoryState``.

    Slots are kept as lists of tensors and stacked on read, so training can backpropagate through the
    memories (an in-place device buffer is the runtime's job; the slot policy is the same ``RingSlots``).
    """

    def __init__(self, num_maskmem: int, num_pointers: int, batch: int, hw: int, mem_dim: int, hidden_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.slots = RingSlots(num_maskmem, num_pointers)
        zeros_mem = torch.zeros(batch, hw, mem_dim, device=device, dtype=dtype)
        zeros_ptr = torch.zeros(batch, hidden_dim, device=device, dtype=dtype)
        self.memory: list[Tensor] = [zeros_mem] * num_maskmem
        self.memory_pos: list[Tensor] = [zeros_mem] * num_maskmem
        self.pointers: list[Tensor] = [zeros_ptr] * num_pointers
        self.batch, self.device = batch, device

    @classmethod
    def for_head(cls, head: MaskHead, batch: int = 1, device=None, dtype=None) -> MaskMemoryBank:
        p = next(head.parameters())
        return cls(head.cfg.num_maskmem, MAX_OBJECT_POINTERS, batch, head.embed_size**2, head.cfg.mem_dim,
                   head.cfg.hidden_dim, device or p.device, dtype or p.dtype)

    def add(self, frame_idx: int, memory: Tensor, memory_pos: Tensor, pointer: Tensor, conditioning: bool) -> None:
        """Store one frame: memory/memory_pos [B, HW, Cm], pointer [B, C]."""
        ms, ps = self.slots.add(frame_idx, conditioning)
        if ms is not None:
            self.memory[ms], self.memory_pos[ms] = memory, memory_pos
        if ps is not None:
            self.pointers[ps] = pointer

    def state(self, frame_idx: int) -> MemoryState:
        """The bank as seen from frame ``frame_idx``: fixed shapes [B, M, ...] / [B, P, ...]."""
        moff, mvalid, poff, pvalid = self.slots.offsets(frame_idx)

        def rows(x):
            return torch.as_tensor(x, device=self.device).expand(self.batch, -1)

        return MemoryState(
            memory=torch.stack(self.memory, dim=1), memory_pos=torch.stack(self.memory_pos, dim=1),
            memory_offsets=rows(moff), memory_valid=rows(mvalid), pointers=torch.stack(self.pointers, dim=1),
            pointer_offsets=rows(poff), pointer_valid=rows(pvalid),
        )


def _encode_frames(head: MaskHead, pixels: Tensor, image_batch: int | None) -> ImageFeatures:
    chunk = image_batch or pixels.shape[0]
    parts = [head.encode_image(pixels[i:i + chunk]) for i in range(0, pixels.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return ImageFeatures(*(torch.cat([getattr(p, name) for p in parts]) for name in
                           ("feat_s0", "feat_s1", "embedding", "embedding_pos")))


def track(head: MaskHead, pixels: Tensor, sparse_prompt: Tensor, image_batch: int | None = None,
          box: Tensor | None = None) -> TrackOutput:
    """Segment one object through a video: pixels [T, 3, S, S], sparse_prompt [1, N, C] (+ the prompt box [1, 4]
    for a head with ``box_mask_prompt``) -> ``TrackOutput``.

    Frame 0 is the conditioning frame (the prompt, no memory); every later frame runs memory attention over
    the ring buffer, then the decoder without a prompt. Each frame's selected mask is encoded into the bank.
    Differentiable end to end (train with a few frames); deterministic in eval mode. ``image_batch`` bounds
    how many frames the image encoder sees at once (default: all).
    """
    s, c = head.image_size, head.cfg.hidden_dim
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s) or pixels.shape[0] < 1:
        raise ValueError(f"pixels must be [T >= 1, 3, {s}, {s}], got {tuple(pixels.shape)}")
    if sparse_prompt.ndim != 3 or sparse_prompt.shape[0] != 1 or sparse_prompt.shape[2] != c:
        raise ValueError(f"sparse_prompt must be [1, N, {c}] (one object), got {tuple(sparse_prompt.shape)}")
    out = track_batch(head, pixels[None], sparse_prompt, image_batch, box)
    return TrackOutput(*(t[0] for t in (out.low_res_logits, out.object_score_logits, out.iou,
                                        out.raw_low_res_logits)))


def track_batch(head: MaskHead, pixels: Tensor, sparse_prompt: Tensor, image_batch: int | None = None,
                box: Tensor | None = None) -> TrackOutput:
    """``track`` for B videos at once (one object each, same frame count): pixels [B, T, 3, S, S],
    sparse_prompt [B, N, C], box [B, 4] (the prompt box; needed by a head with ``box_mask_prompt``, unused
    otherwise) -> ``TrackOutput`` whose fields have a leading batch dim ([B, T, 1, s, s], [B, T, 1]).

    Training runs every mask sample of a batch through one call: the image encoder sees all B*T frames at once
    and each frame step decodes / attends / encodes memories for the B videos together (B memory banks side by
    side in one ``MaskMemoryBank`` of batch B). Row b equals ``track`` on video b alone.
    """
    s, c = head.image_size, head.cfg.hidden_dim
    if pixels.ndim != 5 or tuple(pixels.shape[2:]) != (3, s, s) or pixels.shape[1] < 1:
        raise ValueError(f"pixels must be [B, T >= 1, 3, {s}, {s}], got {tuple(pixels.shape)}")
    b, num_frames = pixels.shape[:2]
    if sparse_prompt.ndim != 3 or sparse_prompt.shape[0] != b or sparse_prompt.shape[2] != c:
        raise ValueError(f"sparse_prompt must be [{b}, N, {c}] (one object per video), got "
                         f"{tuple(sparse_prompt.shape)}")
    if head.uses_box_mask and (box is None or tuple(box.shape) != (b, 4)):
        raise ValueError(f"this mask head takes the prompt box as a mask prompt (box_mask_prompt): pass box [{b}, 4] "
                         f"(normalized xyxy, the box the sparse prompt embeds), got "
                         f"{None if box is None else tuple(box.shape)}")
    flat = _encode_frames(head, pixels.reshape(b * num_frames, 3, s, s), image_batch)
    rows = torch.arange(b, device=pixels.device) * num_frames  # row of video i's frame 0 in the flat batch
    bank = MaskMemoryBank.for_head(head, batch=b, device=pixels.device, dtype=flat.embedding.dtype)
    outs = []
    for t in range(num_frames):
        f = flat.select(rows + t)
        if t == 0:
            dec = head.decode(f, head.condition_without_memory(f.embedding), sparse_prompt.to(f.embedding.dtype),
                              box=box)
        else:
            dec = head.decode(f, head.memory_attention(f.embedding, f.embedding_pos, bank.state(t)), None)
        if t < num_frames - 1:  # the last frame's memory would never be read
            mem, pos = head.encode_memory(f.embedding, dec.low_res_logits, dec.object_score_logits)
            bank.add(t, mem, pos, dec.object_pointer, conditioning=t == 0)
        outs.append(dec)
    return TrackOutput(
        low_res_logits=torch.stack([o.low_res_logits for o in outs], 1),
        object_score_logits=torch.stack([o.object_score_logits for o in outs], 1),
        iou=torch.stack([o.iou for o in outs], 1),
        raw_low_res_logits=torch.stack([o.raw_low_res_logits for o in outs], 1),
    )


__all__ = ["TrackOutput", "MaskMemoryBank", "track", "track_batch"]
