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


def capacity_error(prompt_len: int, max_new_tokens: int, capacity: int, cached: int = 0) -> str | None:
    """The message refusing a prompt of ``prompt_len`` positions (+ ``max_new_tokens``, + ``cached`` positions) in a
    KV cache of ``capacity``; None when it fits. One wording for the encoder, the KV cache and the reference."""
    on_top = f" on top of {cached} cached" if cached else ""
    need = cached + prompt_len
    if need > capacity:
        return (f"the prompt is {prompt_len} tokens (visual tokens included){on_top} but the KV cache holds {capacity} "
                "(kv.max_context); shorten the question, or re-export with a larger llm.max_context")
    if need + max_new_tokens > capacity:
        return (f"the prompt is {prompt_len} tokens{on_top} and max_new_tokens={max_new_tokens}: "
                f"{need + max_new_tokens} positions exceed the KV capacity {capacity} (kv.max_context); lower "
                f"max_new_tokens to <= {capacity - need}, shorten the question, or re-export with a larger "
                "llm.max_context")
    return None


def _utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (surrogate-escaped bytes from argv, or a lone surrogate); None if it
    can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        if 0xDC80 <= ch <= 0xDCFF:  # os.fsdecode's escape of an undecodable byte
            return (f"the prompt is not valid UTF-8 text: byte 0x{ch - 0xDC00:02x} at character {e.start} cannot be "
                    "decoded (the shell passed raw bytes in another encoding); pass the question as UTF-8, e.g. "
                    "convert it with `iconv -f latin1 -t utf-8`")
        return (f"the prompt is not valid UTF-8 text: it holds a lone surrogate U+{ch:04X} at character {e.start}; "
                "pass a well-formed str (decode bytes with .decode('utf-8'))")
    return None


class PromptEncoder:
    """Question (+ frame times, + a training answer) -> :class:`PromptIds`; generated ids -> text.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` holding the task tokens.
        template: the prompt layout. bos_id / eos_id: the BOS each chunk starts with and the EOS ending an answer.
        bos_per_chunk: each chunk gets its own BOS (the release's quirk, kept for weight compatibility).
        max_context: the KV capacity; when given, :meth:`build` refuses prompts (+ ``max_new_tokens``) that exceed it.

    The prompt guard (:meth:`build`, the one place every entry point goes through): the question must be a
    non-empty, valid UTF-8 ``str``; user text never produces a special or task token: a question that holds one
    (``<s>``, ``</s>``, ``<unk>``, ``<boxes>``, ``<track_begin>``, ... -- every added token of the tokenizer) is
    **refused** with a ValueError naming the token, except ``<track_box>``, the slot of a box prompt, accepted
    only when as many boxes are given (``num_boxes``; with boxes and no slot in the text, the slots are appended
    after the question).
    """

    def __init__(self, tokenizer, template: PromptTemplate, bos_id: int, eos_id: int, bos_per_chunk: bool = True,
                 max_context: int | None = None):
        self.tok, self.template = tokenizer, template
        self.bos_id, self.eos_id, self.bos_per_chunk = int(bos_id), int(eos_id), bool(bos_per_chunk)
        self.max_context = None if max_context is None else int(max_context)
        added = tokenizer.get_added_tokens_decoder()
        self.control_ids = {int(i): t.content for i, t in added.items()}  # every special / task token
        self.box_slot = next(iter(INPUT_TOKENS))
        self.box_id = tokenizer.token_to_id(self.box_slot)
        self._max_piece = max((len(p) for p in tokenizer.get_vocab()), default=1)

    @property
    def num_visual(self) -> int:
        return self.template.visual_tokens

    def encode_text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _chunk(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_per_chunk else []) + self.encode_text(text)

    def check_question(self, question, num_boxes: int = 0) -> str:
        """The prompt guard (see the class docstring) -> the question with its box slots; ValueError otherwise."""
        if not isinstance(question, str):
            raise ValueError(f"the prompt must be a string, got {type(question).__name__}")
        problem = _utf8_problem(question)
        if problem:
            raise ValueError(problem)
        if not question.strip():
            raise ValueError(f"the prompt is empty ({question!r}); it must be a non-empty string: pass a question, "
                             "e.g. --prompt \"What happens?\"")
        if not isinstance(num_boxes, int) or num_boxes < 0:
            raise ValueError(f"num_boxes must be an int >= 0, got {num_boxes!r}")
        if self.max_context is not None and len(question) > 4 * self._max_piece * self.max_context:
            raise ValueError(f"the prompt is {len(question)} characters, far more tokens than the KV cache holds "
                             f"{self.max_context} (kv.max_context); shorten the question")
        self._refuse_control_tokens(question)
        slots = question.count(self.box_slot)
        if slots and not num_boxes:
            raise ValueError(f"the prompt holds '{self.box_slot}', the slot of a box prompt, but no box was given; "
                             "pass --box x0,y0,x1,y1 (Pipeline.ask(boxes=[...])) or remove it from the question")
        if slots and slots != num_boxes:
            raise ValueError(f"the prompt holds {slots} '{self.box_slot}' slots but {num_boxes} box(es) were given; "
                             "give one box per slot")
        if num_boxes and not slots:
            question = question.rstrip() + " " + " ".join([self.box_slot] * num_boxes)
        return question

    def _refuse_control_tokens(self, question: str) -> None:
        ids = self.encode_text(question)
        bad = [self.control_ids[i] for i in ids if i in self.control_ids and i != self.box_id]
        if bad:
            raise ValueError(f"the prompt holds the control token '{bad[0]}' (special and task tokens typed in a "
                             "question would end the answer or route to a head): it is refused; reword the question "
                             "without it (for a box prompt, use --box)")

    def build(self, question: str, times_s=None, answer: str | None = None, num_boxes: int = 0,
              max_new_tokens: int = 0) -> PromptIds:
        """Prompt ids of ``question`` (checked by the prompt guard); ``times_s``: sampled frame times (s);
        ``answer``: a training answer (may hold task tokens); ``num_boxes``: boxes given for ``<track_box>`` slots;
        ``max_new_tokens``: the decode budget checked with the prompt against ``max_context``."""
        question = self.check_question(question, num_boxes)
        chunks = [self._chunk(c) for c in self.template.render(question, times_s)]
        k = self.template.visual_after_chunk + 1
        ans = self.encode_text(answer) + [self.eos_id] if answer is not None else []
        ids = PromptIds(pre=[i for c in chunks[:k] for i in c], num_visual=self.num_visual,
                        post=[i for c in chunks[k:] for i in c], answer=ans)
        if self.max_context is not None:
            err = capacity_error(ids.prompt_len, int(max_new_tokens), self.max_context)
            if err:
                raise ValueError(err)
        return ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True).strip()
