"""Pictures of retrieval results: a PNG grid (matplotlib) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

THUMBNAIL_PX = 96


def neighbour_grid(
    query_images: Sequence[np.ndarray],
    query_labels: Sequence,
    neighbour_images: Sequence[Sequence[np.ndarray]],
    neighbour_labels: Sequence[Sequence],
    path: "str | os.PathLike",
    class_names: Sequence[str] | None = None,
    distances: Sequence[Sequence] | None = None,
) -> Path:
    """Save a grid: one row per query, the query then its neighbours. Where the query's label is
    known, a neighbour whose label differs gets a red frame and a cross, a matching one green;
    a query label of None leaves the frames black. The title states the real k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(query_images)
    k = max((len(n) for n in neighbour_images), default=0)
    cols = 1 + k
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
    name = (lambda c: class_names[c]) if class_names else str
    judged = any(label is not None for label in query_labels)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                known = query_labels[r] is not None
                image, title, colour = query_images[r], f"query: {name(query_labels[r])}" if known else "query", "black"
            elif c - 1 < len(neighbour_images[r]):
                image = neighbour_images[r][c - 1]
                label = neighbour_labels[r][c - 1]
                title = f"{c}: {name(label)}" + (f" d={distances[r][c - 1]:g}" if distances is not None else "")
                colour = "black"
                if query_labels[r] is not None:
                    ok = label == query_labels[r]
                    title += "" if ok else " ✗"
                    colour = "green" if ok else "red"
            else:
                ax.axis("off")
                continue
            ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
            ax.set_title(title, fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1 if c == 0 else 3)
    fig.suptitle(f"Queries and their {k} nearest neighbours" + (" (red ✗: wrong class)" if judged else ""),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load(path: str) -> np.ndarray:
    """An image as an array, or a grey square where the file is gone or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return np.full((THUMBNAIL_PX, THUMBNAIL_PX, 3), 200, dtype=np.uint8)


def results_grid(results: list[dict], path: "str | os.PathLike") -> Path:
    """The neighbour grid of :func:`hashapp.query.search_images` results (unreadable queries left out)."""
    found = [item for item in results if "error" not in item]
    return neighbour_grid([_load(item["query"]) for item in found], [None] * len(found),
                          [[_load(n["path"]) for n in item["neighbours"]] for item in found],
                          [[n["class"] for n in item["neighbours"]] for item in found], path,
                          distances=[[n["distance"] for n in item["neighbours"]] for item in found])


def _data_uri(path: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_load(path)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def results_html(results: list[dict], path: "str | os.PathLike") -> Path:
    """A self-contained HTML page (thumbnails inlined) of :func:`hashapp.query.search_images` results."""
    parts = ["<!doctype html><meta charset='utf-8'><title>hashindex search results</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;text-align:center;"
             "font-size:12px}img{width:96px;height:96px;object-fit:contain;border:1px solid #999}</style>"]
    for item in results:
        query = html.escape(item["query"])
        if "error" in item:
            parts.append(f"<h2>{query}</h2><p class='error'>unreadable: {html.escape(item['error'])}</p>")
            continue
        parts.append(f"<h2>{query}</h2><p>voted class: <b class='voted'>{html.escape(str(item['voted_class']))}</b>"
                     f" &middot; {len(item['neighbours'])} nearest neighbours, {item['distance_kind']} distance</p>")
        parts.append(f"<figure><img src='{_data_uri(item['query'])}' alt='query'><figcaption>query</figcaption></figure>")
        for rank, n in enumerate(item["neighbours"], 1):
            parts.append(f"<figure class='neighbour'><img src='{_data_uri(n['path'])}' title='{html.escape(n['path'])}'"
                         f" alt='id {n['id']}'><figcaption>{rank}. {html.escape(n['class'])}<br>"
                         f"d={n['distance']:g} &middot; id {n['id']}</figcaption></figure>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
