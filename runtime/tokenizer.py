"""Prompt tokenization from the manifest (HF ``tokenizers`` only): BOS per chunk, visual slots, decoding.

Sequence layout (the release's, see the manifest's ``prompt`` block)::

    BOS chunk0 | visual_tokens visual embeddings | BOS chunk1 | BOS chunk2(question)

``chunk0`` = ``[INST] <Video>``, ``chunk1`` = ``</Video> {system} [/INST]``, ``chunk2`` =
`` [INST] {question} [/INST] ``; when the question mentions time (any of ``time_words``) the sentence listing
the sampled frame times is put before it. Each chunk is tokenized without special tokens and gets its own
BOS when ``bos_per_chunk`` (the release's quirk, kept for weight compatibility).

Manifest keys read (``tokenizer``): ``files`` (``tokenizer.json`` first), ``bos_id``, ``eos_id``,
``bos_per_chunk``; (``prompt``): ``chunks`` (with a ``question_slot``, ``{question}``), ``visual_after_chunk``,
``question_strip``, ``time_words``, ``time_sentence`` (prefix, item_format, joiner, suffix), ``visual_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIME_WORDS = ("when", "time", "second", "moment", "during", "start", "end")
DEFAULT_TIME_TEMPLATE = "The video contains frames sampled at {times} seconds."


@dataclass
class PromptIds:
    """``pre`` ids, then ``num_visual`` visual embeddings, then ``post`` ids. Lengths in tokens."""

    pre: list[int]
    num_visual: int
    post: list[int]

    @property
    def length(self) -> int:
        return len(self.pre) + self.num_visual + len(self.post)


class PromptTokenizer:
    """Builds prompt ids for a question and decodes generated ids, from the manifest's files and template."""

    def __init__(self, tokenizer_block: dict, prompt_block: dict, root: Path, task_tokens: dict | None = None):
        from tokenizers import Tokenizer

        files = list(tokenizer_block.get("files") or [])
        path = next((root / f for f in files if str(f).endswith("tokenizer.json")), None)
        if path is None:
            raise ValueError(f"the manifest's tokenizer block lists {files}; the runtime needs a tokenizer.json "
                             "(HF tokenizers format). Re-export with `tpo export`.")
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception subclass on parse errors
            raise ValueError(f"tokenizer file {path} cannot be parsed ({e}); re-export with `tpo export`") from e
        self.bos_id = int(tokenizer_block["bos_id"])
        self.eos_id = int(tokenizer_block["eos_id"])
        self.bos_per_chunk = bool(tokenizer_block.get("bos_per_chunk", True))
        self.num_visual = int(prompt_block["visual_tokens"])
        self.system_message = str(prompt_block.get("system_message", "") or "")
        self.time_words = tuple(prompt_block.get("time_words", DEFAULT_TIME_WORDS))
        self.time_template = str(prompt_block.get("time_template", DEFAULT_TIME_TEMPLATE))
        self.time_format = str(prompt_block.get("time_format", "{:.1f}"))
        self.video_open = str(prompt_block.get("video_open", "[INST] <Video>"))
        self.video_close = str(prompt_block.get("video_close", "</Video>"))
        self.chunks = prompt_block.get("chunks")
        self.question_slot = str(prompt_block.get("question_slot", "{question}"))
        self.question_strip = bool(prompt_block.get("question_strip", True))
        self.time_sentence_parts = prompt_block.get("time_sentence")
        self.visual_after = int(prompt_block.get("visual_after_chunk", 0))
        for token, info in (task_tokens or {}).items():
            got = self.tok.token_to_id(token)
            if got is not None and got != int(info["id"]):
                raise ValueError(f"tokenizer maps {token} to {got} but the manifest says {info['id']}; the export "
                                 "folder is inconsistent: re-export with `tpo export`")

    def mentions_time(self, question: str) -> bool:
        q = question.lower()
        return any(w in q for w in self.time_words)

    def time_sentence(self, times_s) -> str:
        ts = self.time_sentence_parts
        if ts:
            items = ts.get("joiner", ", ").join(ts.get("item_format", "{:.1f}").format(float(t)) for t in times_s)
            return ts.get("prefix", "") + items + ts.get("suffix", "")
        return self.time_template.format(times=", ".join(self.time_format.format(float(t)) for t in times_s))

    def text_chunks(self, question: str, times_s=None) -> list[str]:
        """The 3 text chunks (visual tokens go after chunk ``visual_after_chunk``, 0 in the release)."""
        msg = question.strip() if self.question_strip else question
        if times_s is not None and self.mentions_time(msg):
            msg = self.time_sentence(times_s) + " " + msg
        if self.chunks:
            return [c.replace(self.question_slot, msg) for c in self.chunks]
        system = self.system_message.strip()
        head = self.video_close + (" " + system if system else "") + " [/INST]"
        return [self.video_open, head, " [INST] " + msg + " [/INST] "]

    def encode_text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _chunk(self, text: str) -> list[int]:
        return ([self.bos_id] if self.bos_per_chunk else []) + self.encode_text(text)

    def build(self, question: str, times_s=None) -> PromptIds:
        """Question (+ the sampled frame times in seconds) -> ``PromptIds``."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"the prompt must be a non-empty string, got {question!r}")
        chunks = [self._chunk(c) for c in self.text_chunks(question, times_s)]
        k = self.visual_after + 1
        return PromptIds(pre=[i for c in chunks[:k] for i in c], num_visual=self.num_visual,
                         post=[i for c in chunks[k:] for i in c])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True).strip()
