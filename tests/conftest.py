"""Shared fixtures. Tests generate their own videos and data; nothing is downloaded."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "videochat_tpo"  # copied from the VideoChat-TPO release


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"the release fixtures are missing from {FIXTURES}"
    return FIXTURES


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (real MP4 files + annotations), generated once per test session."""
    from tpo_core.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, num_videos=3, seed=7, split="val")
    return root


@pytest.fixture(scope="session")
def sample_videos(synth_root) -> list[str]:
    videos = sorted(str(p) for p in synth_root.rglob("*.mp4"))
    assert videos, f"the synthetic generator wrote no MP4 under {synth_root}"
    return videos


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    """The embedded default exported once per session (or reused from $TPO_EDGE_CACHE across sessions)."""
    import os

    from export.demo import cached_export

    env = os.environ.get("TPO_EDGE_CACHE")
    cache = Path(env) if env else tmp_path_factory.getbasetemp() / "tpo-edge-cache"
    return cached_export("embedded", cache, log=lambda m: None)


@pytest.fixture(scope="session")
def pipe(export_dir):
    """A CPU runtime pipeline over ``export_dir``."""
    from runtime.pipeline import Pipeline

    return Pipeline.from_manifest(export_dir, threads=2)


@pytest.fixture
def one_thread():
    """Single-threaded torch for launch-bound training tests on busy 2-core machines (opt in with usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def samples(synth_root):
    """The synthetic task samples (one per task kind and clip) of the session's synthetic data root."""
    from tpo_core.data.synth_tasks import task_samples

    return task_samples(synth_root)
