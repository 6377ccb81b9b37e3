"""Prompt ids of a TPO request for the model: the contract's ``PromptEncoder`` plus the model's task-token ids.

Sequence = ``pre`` ids + ``num_visual`` visual embeddings + ``post`` ids [+ ``answer`` ids + EOS]; the layout and
the encoding are ``runtime.contract.prompt``'s (the runtime encodes prompts with the same code).
"""

from __future__ import annotations

from tokenizers import Tokenizer

from runtime.contract.prompt import PromptEncoder, PromptIds, release_template

from .tokens import TASK_TOKENS, TaskTokenIds

__all__ = ["PromptBuilder", "PromptIds"]


class PromptBuilder(PromptEncoder):
    """A ``PromptEncoder`` over the release template that checks the tokenizer's task-token ids."""

    def __init__(self, tokenizer: Tokenizer, base_vocab_size: int, num_visual: int, system_message: str = "",
                 max_context: int | None = None):
        self.task_ids = TaskTokenIds.after_vocab(base_vocab_size)
        for token, expected in self.task_ids.by_token().items():
            got = tokenizer.token_to_id(token)
            if got != expected:
                raise ValueError(f"tokenizer maps {token} to {got}, but the model expects {expected} "
                                 f"(base vocab {base_vocab_size} + its index in {TASK_TOKENS})")
        super().__init__(tokenizer, release_template(system_message, num_visual), _special(tokenizer, "<s>"),
                         _special(tokenizer, "</s>"), max_context=max_context)
        self.system_message = system_message


def _special(tokenizer: Tokenizer, token: str) -> int:
    idx = tokenizer.token_to_id(token)
    if idx is None:
        raise ValueError(f"tokenizer has no {token!r} token; a TPO tokenizer needs <s> and </s>")
    return idx
