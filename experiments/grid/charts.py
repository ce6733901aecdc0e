"""A grid's charts: the validation NME of each cell (mean with std error bars over seeds)."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: str, rows: Sequence[Mapping], title: str,
              color: Optional[Callable[[Mapping], Tuple[str, str]]] = None) -> None:
    """NME mean per row with std error bars; rows without a finished run get no bar.
    ``color(row)`` -> (colour, legend label) groups the bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * max(len(rows), 2) + 1.5, 3.6))
    means = [row["figures"]["nme"]["mean"] for row in rows]
    stds = [row["figures"]["nme"]["std"] or 0.0 for row in rows]
    positions = np.arange(len(rows))
    styles = [color(row) if color else ("#4c72b0", None) for row in rows]
    bars = ax.bar(positions, [m if m is not None else 0.0 for m in means], yerr=stds, capsize=5,
                  color=[c for c, _ in styles], error_kw={"elinewidth": 1.2})
    for bar, mean, std in zip(bars, means, stds):
        text = "not run" if mean is None else f"{mean:.2f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, (mean or 0.0) + std),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    legend = {label: c for c, label in styles if label}
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=label) for label, c in legend.items()],
                  fontsize=8, loc="upper left", ncol=len(legend))
    ax.set_xticks(positions, [f"{row['label']}\n(n={len(row['seeds_done'])})" for row in rows])
    ax.set_ylabel("validation NME (%)")
    ax.set_title(title, fontsize=10)
    top = max([(m or 0.0) + s for m, s in zip(means, stds)] + [1e-3])
    ax.set_ylim(0, top * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_chart(path: str, rows: Sequence[Mapping], x_key: str, x_label: str, title: str,
               annotate: Optional[Callable[[Mapping], str]] = None) -> None:
    """NME mean (with std error bars) against ``row['extra'][x_key]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    points = [(row["extra"][x_key], row["figures"]["nme"]["mean"],
               row["figures"]["nme"]["std"] or 0.0, row) for row in rows
              if row["figures"]["nme"]["mean"] is not None]
    points.sort(key=lambda p: p[0])
    if points:
        xs, ys, es, done = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color="#4c72b0")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        for x, y, row in zip(xs, ys, done):
            if annotate:
                ax.annotate(annotate(row), (x, y), xytext=(4, 6), textcoords="offset points",
                            fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation NME (%)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.1, y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
