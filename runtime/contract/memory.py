"""The mask memory bank's slot policy, written once (SAM2's memory selection as a fixed-capacity ring).

``M`` spatial memory slots: slot 0 holds the prompted (conditioning) frame for the whole track; slots
``1..M-1`` are a ring of the ``M-1`` most recent other frames (written round-robin, the oldest overwritten).
That is exactly the set SAM2 reads at frame ``t``: the conditioning frame plus frames ``t-1 .. t-(M-1)``.
``P`` pointer slots: slot 0 the conditioning frame's pointer, slots ``1..P-1`` a ring of the most recent ones.
Offsets are "frames before the current one" (0 for the conditioning memory slot, SAM2's temporal position 0);
empty slots are ``valid = False`` and masked inside the memory-attention graph, so shapes never change.

:class:`RingSlots` keeps only the bookkeeping (which frame sits in which slot); the tensors live in the
owner's buffers: ``tpo_core``'s differentiable bank (lists of tensors) and the runtime's device ring buffer.
"""

from __future__ import annotations

import numpy as np


class RingSlots:
    """Slot bookkeeping for ``num_maskmem`` memory slots and ``num_pointers`` pointer slots."""

    def __init__(self, num_maskmem: int, num_pointers: int):
        if num_maskmem < 1 or num_pointers < 1:
            raise ValueError(f"a memory bank needs >= 1 memory and pointer slot, got {num_maskmem}, {num_pointers}")
        self.num_maskmem, self.num_pointers = int(num_maskmem), int(num_pointers)
        self.memory_frame = np.full(self.num_maskmem, -1, np.int64)
        self.pointer_frame = np.full(self.num_pointers, -1, np.int64)
        self.writes = 0  # non-conditioning frames written so far

    def reset(self) -> None:
        self.memory_frame[:] = -1
        self.pointer_frame[:] = -1
        self.writes = 0

    def _slot(self, capacity: int, conditioning: bool) -> int | None:
        if conditioning:
            return 0
        return None if capacity == 1 else 1 + self.writes % (capacity - 1)

    def add(self, frame_idx: int, conditioning: bool) -> tuple[int | None, int | None]:
        """Record frame ``frame_idx``; returns (memory slot, pointer slot) to write, None where nothing is kept."""
        ms = self._slot(self.num_maskmem, conditioning)
        ps = self._slot(self.num_pointers, conditioning)
        if ms is not None:
            self.memory_frame[ms] = frame_idx
        if ps is not None:
            self.pointer_frame[ps] = frame_idx
        if not conditioning:
            self.writes += 1
        return ms, ps

    def offsets(self, frame_idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As seen from ``frame_idx``: memory offsets int64 ``[M]``, memory valid bool ``[M]``, pointer offsets
        int64 ``[P]``, pointer valid bool ``[P]``."""
        mvalid, pvalid = self.memory_frame >= 0, self.pointer_frame >= 0
        moff = np.where(mvalid, frame_idx - self.memory_frame, 0)
        moff[0] = 0  # the conditioning slot always reads temporal position 0
        poff = np.where(pvalid, frame_idx - self.pointer_frame, 0)
        return moff.astype(np.int64), mvalid, poff.astype(np.int64), pvalid
