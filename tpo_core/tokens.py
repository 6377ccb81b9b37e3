"""The model's task-token ids (see docs/architecture.md and tpo-reference.md).

The token names, roles and the prompt template are the inference contract and live in
``runtime.contract.prompt`` (re-exported here for the model side). This module adds the id layout: the 7 task
tokens take the ids right after the base vocabulary, in ``TASK_TOKENS`` order: ``<box_begin>`` (+0),
``<time_begin>`` (+1), ``<temp>`` (+2), ``<boxes>`` (+3), ``<track_begin>`` (+4), ``<tracking>`` (+5),
``<track_box>`` (+6). For Mistral (32000 base tokens) this gives 32000..32006.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.contract.prompt import (
    BEGIN_TO_TASK,
    HEADS,
    PLACEHOLDER_EMBEDDING,
    TASK_TOKENS,
    VIDEO_CLOSE,
    VIDEO_OPEN,
    format_timestamps,
    mentions_time,
    release_template,
)

__all__ = ["BEGIN_TO_TASK", "HEADS", "PLACEHOLDER_EMBEDDING", "TASK_TOKENS", "VIDEO_CLOSE", "VIDEO_OPEN",
           "TaskTokenIds", "format_timestamps", "mentions_time", "prompt_chunks"]


@dataclass(frozen=True)
class TaskTokenIds:
    box_begin: int
    time_begin: int
    temp: int
    boxes: int
    track_begin: int
    tracking: int
    track_box: int

    @classmethod
    def after_vocab(cls, base_vocab_size: int) -> TaskTokenIds:
        return cls(*range(base_vocab_size, base_vocab_size + len(TASK_TOKENS)))

    def by_token(self) -> dict[str, int]:
        return dict(zip(TASK_TOKENS, (self.box_begin, self.time_begin, self.temp, self.boxes, self.track_begin,
                                      self.tracking, self.track_box)))

    def begin_ids(self) -> dict[int, tuple[int, str]]:
        """``*_begin`` id -> (placeholder id, head name)."""
        ids = self.by_token()
        return {ids[begin]: (ids[ph], head) for begin, (ph, head) in BEGIN_TO_TASK.items()}


def prompt_chunks(question: str, system_message: str = "", times_s=None) -> list[str]:
    """The released prompt's text chunks for ``question`` (see ``runtime.contract.prompt``)."""
    return release_template(system_message, 0).render(question, times_s)
