"""tpo_core: the TPO video MLLM (video encoder -> Q-Former -> LLM with task tokens -> heads) and its training."""

__version__ = "0.1.0"
