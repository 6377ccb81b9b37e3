"""Loss-curve plots (matplotlib, Agg backend): one panel per logged loss term against the step."""

from __future__ import annotations

from pathlib import Path

SKIP = {"stage", "step", "seconds_per_step", "samples_per_s", "lr_factor", "grad_norm"}


def plot_losses(history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write a PNG of every loss term in ``history`` (records with a ``step`` key); None if nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = sorted({k for r in history for k in r if k not in SKIP and isinstance(r[k], (int, float))},
                   key=lambda k: (k != "loss", k))
    main = [k for k in terms if "_" not in k or k.startswith("mask_")]
    cols = min(3, max(1, len(main)))
    rows = (len(main) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, main):
        pts = [(r["step"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if key in ("loss", "lm") and all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(main):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
