"""Three-stage TPO training (``tpo train``) and evaluation (``tpo eval``); see docs/training.md."""
