"""Pictures of a continual-learning run: accuracy over the stream and accuracy matrices."""
from __future__ import annotations

from typing import Dict, Sequence

import matplotlib

matplotlib.use("Agg")                      # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .summary import RunSummary  # noqa: E402
from ..runs.files import atomic_path  # noqa: E402


def _save(fig, path: str) -> str:
    """Write a PNG atomically (an interrupted run leaves the previous plot, not half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def seen_class_accuracy_curve(matrix: Sequence[Sequence[float]]):
    """Mean accuracy over the experiences seen so far, after each experience."""
    m = np.asarray(matrix, dtype=float)
    return [float(m[t, : t + 1].mean()) for t in range(len(m))]


def plot_runs(summaries: Dict[str, RunSummary], path: str, title: str = "") -> str:
    """One PNG: accuracy on seen classes per experience (left), then each method's accuracy matrix."""
    n = len(summaries)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 3.8), squeeze=False)
    curve_ax = axes[0, 0]
    for name, s in summaries.items():
        curve = seen_class_accuracy_curve(s.accuracy_matrix)
        curve_ax.plot(range(1, len(curve) + 1), curve, marker="o", label=f"{name} ({s.average_accuracy:.1f})")
    curve_ax.set_xlabel("experiences trained")
    curve_ax.set_ylabel("accuracy on seen classes (%)")
    curve_ax.set_ylim(0, 100)
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    for ax, (name, s) in zip(axes[0, 1:], summaries.items()):
        m = np.asarray(s.accuracy_matrix, dtype=float)
        mask = np.triu(np.ones_like(m, dtype=bool), k=1)       # not yet trained: blank
        im = ax.imshow(np.ma.masked_array(m, mask), vmin=0, vmax=100, cmap="viridis")
        for (t, i), v in np.ndenumerate(m):
            if i <= t:
                ax.text(i, t, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 60 else "black")
        ax.set_title(f"{name}: forgetting {s.average_forgetting:.1f}", fontsize=9)
        ax.set_xlabel("tested on experience")
        ax.set_ylabel("after training experience")
        ax.set_xticks(range(len(m)))
        ax.set_yticks(range(len(m)))
    fig.colorbar(im, ax=axes[0, 1:].tolist(), shrink=0.8, label="accuracy (%)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_allocation(allocation, path: str, max_generators: int = 5, title: str = "") -> str:
    """Generators added per experience (bars) and the similarity that decided it (line).

    ``allocation`` is a list of dicts with ``experience``, ``generators`` and,
    from the second experience on, ``similarity`` (as ``RunSummary.extra``).
    """
    exps = [a["experience"] for a in allocation]
    gens = [a["generators"] for a in allocation]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(exps, gens, color="tab:blue", alpha=0.7, label="generators added")
    ax.plot(exps, np.cumsum(gens), color="tab:blue", marker="s", label="pool size")
    ax.set_xlabel("experience")
    ax.set_ylabel("generators")
    ax.set_xticks(exps)
    sims = [(a["experience"], a["similarity"]) for a in allocation if a.get("similarity") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if sims:
        ax2 = ax.twinx()
        ax2.plot(*zip(*sims), color="tab:orange", marker="o", label="similarity to earlier classes")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("descriptor similarity")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.set_title(title or f"prompt allocation (n_max = {max_generators})", fontsize=10)
    return _save(fig, path)
