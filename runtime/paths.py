"""Where tpo-edge keeps its cache (sample video, cached exports): ``$TPO_EDGE_CACHE`` or ``~/.cache/tpo-edge``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TPO_EDGE_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tpo-edge")
