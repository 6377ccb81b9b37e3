"""Token layout of a TPO request: text chunks (each with a BOS) around the spliced visual tokens.

Sequence = ``pre`` ids + ``num_visual`` visual embeddings + ``post`` ids [+ ``answer`` ids + EOS].
``pre``/``post`` come from ``tokens.prompt_chunks``; the release tokenizes each chunk with a BOS.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from .tokens import TASK_TOKENS, TaskTokenIds, prompt_chunks


@dataclass
class PromptIds:
    pre: list[int]  # ids before the visual tokens
    num_visual: int  # visual embeddings spliced after ``pre``
    post: list[int]  # ids after the visual tokens, ending the user turn
    answer: list[int]  # answer ids incl. the final EOS (empty at inference)

    @property
    def prompt_len(self) -> int:
        return len(self.pre) + self.num_visual + len(self.post)

    @property
    def total_len(self) -> int:
        return self.prompt_len + len(self.answer)


class PromptBuilder:
    """Builds ``PromptIds`` for a question (and, for training, an answer)."""

    def __init__(self, tokenizer: Tokenizer, base_vocab_size: int, num_visual: int, system_message: str = ""):
        self.tokenizer = tokenizer
        self.num_visual = num_visual
        self.system_message = system_message
        self.task_ids = TaskTokenIds.after_vocab(base_vocab_size)
        self.bos_id = self._special("<s>")
        self.eos_id = self._special("</s>")
        for token, expected in self.task_ids.by_token().items():
            got = tokenizer.token_to_id(token)
            if got != expected:
                raise ValueError(f"tokenizer maps {token} to {got}, but the model expects {expected} "
                                 f"(base vocab {base_vocab_size} + its index in {TASK_TOKENS})")

    def _special(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no {token!r} token; a TPO tokenizer needs <s> and </s>")
        return idx

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def build(self, question: str, times_s=None, answer: str | None = None) -> PromptIds:
        chunks = prompt_chunks(question, self.system_message, times_s)
        pre = [self.bos_id] + self.encode_text(chunks[0])
        post = [self.bos_id] + self.encode_text(chunks[1]) + [self.bos_id] + self.encode_text(chunks[2])
        ans = self.encode_text(answer) + [self.eos_id] if answer is not None else []
        return PromptIds(pre=pre, num_visual=self.num_visual, post=post, answer=ans)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
