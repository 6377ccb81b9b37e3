"""The transformers API points that moved inside the supported range (``transformers>=5.17,<6``), resolved once.

- KV cache keyword of the causal-LM forward and field of its output: ``past_key_values`` up to 5.23, ``cache``
  from 5.24 on (the old keyword still works there with a deprecation warning, until 5.40).

Everything else the model code uses from transformers (SAM2-video and BLIP-2 Q-Former modules, the Mistral
decoder, ``DynamicCache``) has one API across the range.
"""

from __future__ import annotations

import dataclasses
import inspect

from transformers import MistralForCausalLM

CACHE_KWARG = "cache" if "cache" in inspect.signature(MistralForCausalLM.forward).parameters else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{CACHE_KWARG: cache}``: the KV cache keyword for a transformers causal-LM forward."""
    return {CACHE_KWARG: cache}


def output_cache(output):
    """The KV cache of a transformers ``ModelOutput`` (``cache`` or ``past_key_values``, whichever it has)."""
    names = {f.name for f in dataclasses.fields(output)}
    return getattr(output, "cache" if "cache" in names else "past_key_values")
