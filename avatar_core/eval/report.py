"""Writing evaluation reports: atomic text/CSV/JSON files, per-frame plots, image strips,
Markdown tables. Shared by ``eval selfreenact`` and ``eval novelview``; no metric maths here.

Plots use matplotlib's Agg backend (no display needed), imported on first use.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from avatar_core.errors import AvatarError

__all__ = ["EvalError", "prepare_out_dir", "write_text", "write_json", "write_csv", "write_png",
           "plot_series", "error_image", "image_strip", "md_table", "fmt", "nanmean", "to_u8"]


class EvalError(AvatarError):
    """An evaluation cannot run: bad options, unusable inputs, an unwritable output folder."""


def prepare_out_dir(path) -> Path:
    """Create the output folder (its parent must exist) and check it is writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise EvalError(f"The output {str(out)!r} is a file; expected a folder for the report.")
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists():
        if not parent.is_dir():
            raise EvalError(f"Cannot create the report folder {str(out)!r}: {str(parent)!r} does not exist.")
        try:
            out.mkdir()
        except OSError as exc:
            raise EvalError(f"Cannot create the report folder {str(out)!r} ({exc.strerror}).") from None
    if not os.access(out, os.W_OK):
        raise EvalError(f"The report folder {str(out)!r} is not writable.")
    return out


def _atomic_bytes(path, data: bytes) -> Path:
    path = Path(path)
    from avatar_core.atomic import atomic_path
    with atomic_path(path, "report file") as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path, text: str) -> Path:
    return _atomic_bytes(path, text.encode("utf-8"))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj) -> Path:
    """JSON with NaN/inf written as null."""
    return write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_csv(path, rows: Sequence[Dict], columns: Optional[Sequence[str]] = None, digits: int = 5) -> Path:
    """Rows of dicts -> CSV (floats rounded to ``digits`` significant decimals; NaN as empty)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c), digits) for c in columns])
    return write_text(path, buf.getvalue())


def _cell(v, digits: int):
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.{digits}g}"
    if isinstance(v, (bool, np.bool_)):
        return int(bool(v))
    return v


def to_u8(img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_png(path, rgb) -> Path:
    """An RGB image [H, W, 3] (uint8, or float in [0, 1]) as a PNG, atomically."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(to_u8(rgb)), cv2.COLOR_RGB2BGR))
    if not ok:
        raise EvalError(f"Cannot encode the image {str(path)!r} as PNG.")
    return _atomic_bytes(path, data.tobytes())


def nanmean(x) -> float:
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    x = float(x)
    return "–" if not math.isfinite(x) else f"{x:.{digits}f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence], align: Optional[str] = None) -> str:
    """A Markdown table; ``align`` e.g. "lrrr" (default: first column left, the rest right)."""
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def plot_series(path, x, panels: Dict[str, Dict[str, Sequence[float]]], title: str = "",
                xlabel: str = "frame", better: Optional[Dict[str, str]] = None, marker: str = "") -> Path:
    """One panel per metric, each with a line per method (e.g. avatar vs baseline); PNG.

    panels: {metric: {method: values [len(x)]}}; better: {metric: "higher"|"lower"} in the titles.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (metric, lines) in zip(axes.ravel(), panels.items()):
        for method, values in lines.items():
            ax.plot(x, np.asarray(values, dtype=np.float64), marker=marker, label=method, linewidth=1.3)
        hint = (better or {}).get(metric)
        ax.set_title(metric + (f" ({hint} is better)" if hint else ""), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return _atomic_bytes(path, buf.getvalue())


def error_image(a, b, mask=None, vmax: float = 0.5) -> np.ndarray:
    """|a - b| averaged over channels as an 'inferno' colour image [H, W, 3] uint8, 0..vmax;
    pixels outside ``mask`` (if given) are dimmed."""
    from matplotlib import colormaps

    e = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean(-1)
    rgb = colormaps["inferno"](np.clip(e / vmax, 0.0, 1.0))[..., :3]
    if mask is not None:
        m = np.asarray(mask, np.float32)[..., None]
        rgb = rgb * (0.35 + 0.65 * m)
    return to_u8(rgb)


def image_strip(rows: List[List[np.ndarray]], col_labels: Sequence[str] = (),
                row_labels: Sequence[str] = (), gap: int = 4) -> np.ndarray:
    """A grid of equal-size RGB images with column titles and row labels: [H', W', 3] uint8."""
    import cv2

    tiles = [[to_u8(t) for t in r] for r in rows]
    h, w = tiles[0][0].shape[:2]
    ncol = max(len(r) for r in tiles)
    head = 18 if col_labels else 0
    left = 70 if row_labels else 0
    H = head + len(tiles) * (h + gap)
    W = left + ncol * (w + gap)
    canvas = np.full((H, W, 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    for j, lab in enumerate(col_labels):
        cv2.putText(canvas, str(lab), (left + j * (w + gap) + 4, 13), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    for i, r in enumerate(tiles):
        y = head + i * (h + gap)
        if i < len(row_labels):
            cv2.putText(canvas, str(row_labels[i]), (4, y + h // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        for j, t in enumerate(r):
            x = left + j * (w + gap)
            canvas[y:y + h, x:x + w] = t[:h, :w]
    return canvas
