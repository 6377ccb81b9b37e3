"""Video propagation for the mask head: a fixed-capacity ring-buffer memory bank and ``track``.

Memory-bank contract (the same one a runtime keeps on the device, see docs/mask_head.md):

- ``num_maskmem`` (M) spatial slots: slot 0 holds the conditioning (prompted) frame for the whole video;
  slots 1..M-1 are a ring of the M-1 most recent non-conditioning frames (written round-robin, so the
  oldest is overwritten). This is exactly the set SAM2 reads at frame t: the conditioning frame plus
  frames t-1 .. t-(M-1).
- ``MAX_OBJECT_POINTERS`` (P = 16) pointer slots: slot 0 the conditioning frame's pointer, slots 1..P-1 a
  ring of the P-1 most recent frames' pointers (SAM2: t-1 .. t-15).
- Offsets are "frames before the current frame"; spatial slots of conditioning frames get offset 0 (SAM2's
  temporal position 0). Empty slots are ``valid = False``: masked out of the attention, shapes never change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
    memories (an in-place device buffer is the runtime's job; the layout is the same).
    """

    def __init__(self, num_maskmem: int, num_pointers: int, batch: int, hw: int, mem_dim: int, hidden_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if num_maskmem < 1 or num_pointers < 1:
            raise ValueError(f"memory bank needs >= 1 memory and pointer slot, got {num_maskmem}, {num_pointers}")
        self.num_maskmem, self.num_pointers = num_maskmem, num_pointers
        zeros_mem = torch.zeros(batch, hw, mem_dim, device=device, dtype=dtype)
        zeros_ptr = torch.zeros(batch, hidden_dim, device=device, dtype=dtype)
        self.memory: list[Tensor] = [zeros_mem] * num_maskmem
        self.memory_pos: list[Tensor] = [zeros_mem] * num_maskmem
        self.memory_frame: list[int | None] = [None] * num_maskmem
        self.pointers: list[Tensor] = [zeros_ptr] * num_pointers
        self.pointer_frame: list[int | None] = [None] * num_pointers
        self.batch, self.device = batch, device
        self._writes = 0  # non-conditioning frames written so far

    @classmethod
    def for_head(cls, head: MaskHead, batch: int = 1, device=None, dtype=None) -> MaskMemoryBank:
        p = next(head.parameters())
        return cls(head.cfg.num_maskmem, MAX_OBJECT_POINTERS, batch, head.embed_size**2, head.cfg.mem_dim,
                   head.cfg.hidden_dim, device or p.device, dtype or p.dtype)

    def memory_slot(self, conditioning: bool) -> int:
        """Slot the next memory goes to (0 for a conditioning frame, else the ring position)."""
        if conditioning or self.num_maskmem == 1:
            return 0
        return 1 + self._writes % (self.num_maskmem - 1)

    def pointer_slot(self, conditioning: bool) -> int:
        if conditioning or self.num_pointers == 1:
            return 0
        return 1 + self._writes % (self.num_pointers - 1)

    def add(self, frame_idx: int, memory: Tensor, memory_pos: Tensor, pointer: Tensor, conditioning: bool) -> None:
        """Store one frame: memory/memory_pos [B, HW, Cm], pointer [B, C]."""
        if conditioning or self.num_maskmem > 1:
            ms = self.memory_slot(conditioning)
            self.memory[ms], self.memory_pos[ms], self.memory_frame[ms] = memory, memory_pos, frame_idx
        if conditioning or self.num_pointers > 1:
            ps = self.pointer_slot(conditioning)
            self.pointers[ps], self.pointer_frame[ps] = pointer, frame_idx
        if not conditioning:
            self._writes += 1

    def state(self, frame_idx: int) -> MemoryState:
        """The bank as seen from frame ``frame_idx``: fixed shapes [B, M, ...] / [B, P, ...]."""

        def offsets(frames: list[int | None], cond_zero: bool) -> tuple[Tensor, Tensor]:
            off = [0 if f is None or (cond_zero and i == 0) else frame_idx - f for i, f in enumerate(frames)]
            val = [f is not None for f in frames]
            off_t = torch.tensor(off, dtype=torch.int64, device=self.device).expand(self.batch, -1)
            return off_t, torch.tensor(val, dtype=torch.bool, device=self.device).expand(self.batch, -1)

        mem_off, mem_valid = offsets(self.memory_frame, cond_zero=True)
        ptr_off, ptr_valid = offsets(self.pointer_frame, cond_zero=False)
        return MemoryState(
            memory=torch.stack(self.memory, dim=1), memory_pos=torch.stack(self.memory_pos, dim=1),
            memory_offsets=mem_off, memory_valid=mem_valid, pointers=torch.stack(self.pointers, dim=1),
            pointer_offsets=ptr_off, pointer_valid=ptr_valid,
        )


def _encode_frames(head: MaskHead, pixels: Tensor, image_batch: int | None) -> ImageFeatures:
    chunk = image_batch or pixels.shape[0]
    parts = [head.encode_image(pixels[i:i + chunk]) for i in range(0, pixels.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return ImageFeatures(*(torch.cat([getattr(p, name) for p in parts]) for name in
                           ("feat_s0", "feat_s1", "embedding", "embedding_pos")))


def track(head: MaskHead, pixels: Tensor, sparse_prompt: Tensor, image_batch: int | None = None) -> TrackOutput:
    """Segment one object through a video: pixels [T, 3, S, S], sparse_prompt [1, N, C] -> ``TrackOutput``.

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
    out = track_batch(head, pixels[None], sparse_prompt, image_batch)
    return TrackOutput(*(t[0] for t in (out.low_res_logits, out.object_score_logits, out.iou,
                                        out.raw_low_res_logits)))


def track_batch(head: MaskHead, pixels: Tensor, sparse_prompt: Tensor, image_batch: int | None = None) -> TrackOutput:
    """``track`` for B videos at once (one object each, same frame count): pixels [B, T, 3, S, S],
    sparse_prompt [B, N, C] -> ``TrackOutput`` whose fields have a leading batch dim ([B, T, 1, s, s], [B, T, 1]).

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
    flat = _encode_frames(head, pixels.reshape(b * num_frames, 3, s, s), image_batch)
    rows = torch.arange(b, device=pixels.device) * num_frames  # row of video i's frame 0 in the flat batch
    bank = MaskMemoryBank.for_head(head, batch=b, device=pixels.device, dtype=flat.embedding.dtype)
    outs = []
    for t in range(num_frames):
        f = flat.select(rows + t)
        if t == 0:
            dec = head.decode(f, head.condition_without_memory(f.embedding), sparse_prompt.to(f.embedding.dtype))
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
