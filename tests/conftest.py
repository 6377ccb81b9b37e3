"""Shared fixtures. Tests generate their own videos and data; nothing is downloaded."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "videochat_tpo"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"the release fixtures must sit beside the checkout at {FIXTURES}"
    return FIXTURES
