"""The sample video of ``tpo ask --sample`` and ``tpo demo``: one synthetic video (exact labels) and one prompt per
task about an object in it."""

from __future__ import annotations

from pathlib import Path

SAMPLE_PROMPTS = ("What colour is the background?", "Where is {obj}?", "When does {obj} appear?", "Track {obj}.")


def sample_video(cache: Path) -> tuple[Path, str]:
    """Generate (once) a sample video into ``cache``; returns (its path, a phrase naming an object in it)."""
    from .synth import generate, task_samples

    if not (cache / "manifest.json").is_file():
        generate(cache, 1, 12345, "val", overwrite=True)
    samples = task_samples(cache)
    phrase = next((s.phrase for s in samples if s.phrase), "the red circle")
    if not phrase.lower().startswith(("the ", "a ", "an ")):
        phrase = "the " + phrase
    return Path(samples[0].video), phrase
