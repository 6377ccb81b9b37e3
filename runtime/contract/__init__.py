"""The inference contract, written once: what the reference (``tpo_core``), the verifier (``export``) and the
runtime all follow. Torch-free (numpy and ``tokenizers`` only).

- :mod:`runtime.contract.prompt`: task tokens and their roles, the released prompt template (chunks, BOS per
  chunk, the time sentence), prompt encoding into ``pre`` / visual slots / ``post`` ids.
- :mod:`runtime.contract.routing`: the sampler and the decode loop with task-token routing (``*_begin`` ->
  forced placeholder -> head), independent of the array backend.
- :mod:`runtime.contract.memory`: the mask memory bank's slot policy (ring buffer of the latest frames, slot 0
  for the prompted frame) and the offsets / validity the memory-attention graph reads.
- :mod:`runtime.contract.postprocess`: head outputs -> user units (box in pixels, spans in seconds).

``runtime/results.py`` holds the result types and ``runtime/video_io.py`` the video reading and frame sampling
that both sides use.
"""
