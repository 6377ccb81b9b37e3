"""Task tokens and the prompt template (see docs/architecture.md and tpo-reference.md).

The 7 task tokens take the ids right after the base vocabulary, in the official order:
``<box_begin>`` (+0), ``<time_begin>`` (+1), ``<temp>`` (+2), ``<boxes>`` (+3), ``<track_begin>`` (+4),
``<tracking>`` (+5), ``<track_box>`` (+6). For Mistral (32000 base tokens) this gives 32000..32006.
"""

from __future__ import annotations

from dataclasses import dataclass

TASK_TOKENS = ("<box_begin>", "<time_begin>", "<temp>", "<boxes>", "<track_begin>", "<tracking>", "<track_box>")

# *_begin token -> (placeholder that follows it, head it triggers)
BEGIN_TO_TASK = {
    "<box_begin>": ("<boxes>", "region"),
    "<time_begin>": ("<temp>", "temporal"),
    "<track_begin>": ("<tracking>", "mask"),
}
HEADS = ("region", "temporal", "mask")
# placeholder -> name of the learnable embedding that replaces its input embedding
PLACEHOLDER_EMBEDDING = {"<boxes>": "box_token", "<temp>": "temporal_token", "<tracking>": "track_token"}

VIDEO_OPEN = "[INST] <Video>"
VIDEO_CLOSE = "</Video>"
VISUAL_PLACEHOLDER = "<VIDEO_TOKEN>"  # not in the vocabulary: the visual tokens are spliced in as embeddings


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


def format_timestamps(times_s) -> str:
    """The sentence listing the sampled frame times, added when a question mentions time."""
    return "The video contains frames sampled at " + ", ".join(f"{t:.1f}" for t in times_s) + " seconds."


def mentions_time(question: str) -> bool:
    q = question.lower()
    return any(w in q for w in ("when", "time", "second", "moment", "during", "start", "end"))


def prompt_chunks(question: str, system_message: str = "", times_s=None) -> list[str]:
    """Text chunks of the released prompt; the visual tokens go between chunk 0 and chunk 1.

    ``[INST] <Video>`` + visual tokens + ``</Video>`` + system message + ``[/INST]`` +
    `` [INST] `` + question + `` [/INST] ``. Each chunk is tokenized with a BOS (the release's quirk,
    kept for weight compatibility).
    """
    msg = question.strip()
    if times_s is not None and mentions_time(msg):
        msg = format_timestamps(times_s) + " " + msg
    head = VIDEO_CLOSE + (" " + system_message.strip() if system_message.strip() else "") + " [/INST]"
    return [VIDEO_OPEN, head, " [INST] " + msg + " [/INST] "]
