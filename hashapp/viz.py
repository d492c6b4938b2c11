"""Pictures of retrieval results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def neighbour_grid(
    query_images: Sequence[np.ndarray],
    query_labels: Sequence[int],
    neighbour_images: Sequence[Sequence[np.ndarray]],
    neighbour_labels: Sequence[Sequence[int]],
    path: "str | os.PathLike",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a grid: one row per query, the query then its neighbours; a neighbour whose
    label differs from the query's gets a red frame and a cross, a matching one green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(query_images)
    cols = 1 + max((len(n) for n in neighbour_images), default=0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
    name = (lambda c: class_names[c]) if class_names else str
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                image, title, colour = query_images[r], f"query: {name(query_labels[r])}", "black"
            elif c - 1 < len(neighbour_images[r]):
                image = neighbour_images[r][c - 1]
                ok = neighbour_labels[r][c - 1] == query_labels[r]
                title = f"{c}: {name(neighbour_labels[r][c - 1])}" + ("" if ok else " ✗")
                colour = "green" if ok else "red"
            else:
                ax.axis("off")
                continue
            ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
            ax.set_title(title, fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1 if c == 0 else 3)
    fig.suptitle("Queries and their 8 nearest neighbours (red ✗: wrong class)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
