"""Task tokens and the released prompt template, and prompt encoding (``tokenizers`` only).

Task tokens (ids after the base vocabulary, in this order; VideoChat-TPO: 32000..32006):

==================  ===========  =============================================================================
token               role         meaning
==================  ===========  =============================================================================
``<box_begin>``     begin        emitted by the LLM -> region head; ``<boxes>`` is forced next
``<time_begin>``    begin        emitted -> temporal head; ``<temp>`` is forced next
``<temp>``          placeholder  input embedding = learnable ``temporal_token``
``<boxes>``         placeholder  input embedding = learnable ``box_token``
``<track_begin>``   begin        emitted -> mask head; ``<tracking>`` is forced next
``<tracking>``      placeholder  input embedding = learnable ``track_token``
``<track_box>``     input        input embedding = ``loc_encoder(box)``: a box given with the prompt
==================  ===========  =============================================================================

Prompt (the release's): ``[INST] <Video>`` + visual tokens + ``</Video> {system} [/INST]`` +
`` [INST] {question} [/INST] ``, each text chunk tokenized with its own BOS. When the question mentions time
(any of :data:`TIME_WORDS`, case-insensitive substring) the sentence listing the sampled frame times goes
before it. :class:`PromptTemplate` is that layout as data (the manifest's ``prompt`` section);
:class:`PromptEncoder` turns a question into :class:`PromptIds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_TOKENS = ("<box_begin>", "<time_begin>", "<temp>", "<boxes>", "<track_begin>", "<tracking>", "<track_box>")
HEADS = ("region", "temporal", "mask")
# *_begin token -> (placeholder forced after it, head it triggers)
BEGIN_TO_TASK = {"<box_begin>": ("<boxes>", "region"), "<time_begin>": ("<temp>", "temporal"),
                 "<track_begin>": ("<tracking>", "mask")}
# placeholder -> name of the learnable embedding that replaces its input embedding
PLACEHOLDER_EMBEDDING = {"<boxes>": "box_token", "<temp>": "temporal_token", "<tracking>": "track_token"}
INPUT_TOKENS = {"<track_box>": "loc_encoder"}  # token -> graph embedding its input (a box)
TIME_WORDS = ("when", "time", "second", "moment", "during", "start", "end")
VIDEO_OPEN = "[INST] <Video>"
VIDEO_CLOSE = "</Video>"
QUESTION_SLOT = "{question}"


@dataclass(frozen=True)
class TimeSentence:
    """``prefix + joiner.join(item_format.format(t) for t in times) + suffix``."""

    prefix: str
    item_format: str
    joiner: str
    suffix: str

    def render(self, times_s) -> str:
        return self.prefix + self.joiner.join(self.item_format.format(float(t)) for t in times_s) + self.suffix


RELEASE_TIME_SENTENCE = TimeSentence("The video contains frames sampled at ", "{:.1f}", ", ", " seconds.")


def format_timestamps(times_s) -> str:
    """The release's sentence listing the sampled frame times (seconds)."""
    return RELEASE_TIME_SENTENCE.render(times_s)


def mentions_time(question: str, words=TIME_WORDS) -> bool:
    q = question.lower()
    return any(w in q for w in words)


@dataclass(frozen=True)
class PromptTemplate:
    """Text chunks around the visual tokens (visual embeddings go after chunk ``visual_after_chunk``).

    ``chunks`` hold :data:`QUESTION_SLOT` where the (stripped) question goes; ``visual_tokens`` is the number of
    visual embeddings the vision graph produces.
    """

    chunks: tuple[str, ...]
    visual_after_chunk: int
    visual_tokens: int
    question_slot: str
    system_message: str
    time_words: tuple[str, ...]
    time_sentence: TimeSentence

    def render(self, question: str, times_s=None) -> list[str]:
        """The text chunks for ``question``; ``times_s``: sampled frame times (seconds) for the time sentence."""
        msg = question.strip()
        if times_s is not None and mentions_time(msg, self.time_words):
            msg = self.time_sentence.render(times_s) + " " + msg
        return [c.replace(self.question_slot, msg) for c in self.chunks]


def release_template(system_message: str, visual_tokens: int) -> PromptTemplate:
    """The VideoChat-TPO prompt layout."""
    system = system_message.strip()
    head = VIDEO_CLOSE + (" " + system if system else "") + " [/INST]"
    return PromptTemplate(chunks=(VIDEO_OPEN, head, " [INST] " + QUESTION_SLOT + " [/INST] "), visual_after_chunk=0,
                          visual_tokens=visual_tokens, question_slot=QUESTION_SLOT, system_message=system_message,
                          time_words=TIME_WORDS, time_sentence=RELEASE_TIME_SENTENCE)


@dataclass
class PromptIds:
    """``pre`` ids, then ``num_visual`` visual embeddings, then ``post`` ids [+ ``answer`` ids incl. EOS]."""

    pre: list[int]
    num_visual: int
    post: list[int]
    answer: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.pre) + self.num_visual + len(self.post)


class PromptEncoder:
    """Question (+ frame times, + a training answer) -> :class:`PromptIds`; generated ids -> text.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` holding the task tokens.
        template: the prompt layout. bos_id / eos_id: the BOS each chunk starts with and the EOS ending an answer.
        bos_per_chunk: each chunk gets its own BOS (the release's quirk, kept for weight compatibility).
    """

    def __init__(self, tokenizer, template: PromptTemplate, bos_id: int, eos_id: int, bos_per_chunk: bool = True):
        self.tok, self.template = tokenizer, template
        self.bos_id, self.eos_id, self.bos_per_chunk = int(bos_id), int(eos_id), bool(bos_per_chunk)

    @property
    def num_visual(self) -> int:
        return self.template.visual_tokens

    def encode_text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _chunk(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_per_chunk else []) + self.encode_text(text)

    def build(self, question: str, times_s=None, answer: str | None = None) -> PromptIds:
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"the prompt must be a non-empty string, got {question!r}")
        chunks = [self._chunk(c) for c in self.template.render(question, times_s)]
        k = self.template.visual_after_chunk + 1
        ans = self.encode_text(answer) + [self.eos_id] if answer is not None else []
        return PromptIds(pre=[i for c in chunks[:k] for i in c], num_visual=self.num_visual,
                         post=[i for c in chunks[k:] for i in c], answer=ans)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()
