"""Results as people and scripts read them: rich tables, JSON files, matplotlib figures.

A result row is a plain dict, the same shape in the table and in ``--json`` output:
``{"name": "ensemble (5)", "test": {"accuracy": 0.91, "nll": 0.25, ...}, "val": {...}, ...}``
(accuracy as a fraction; tables show it in percent).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

__all__ = [
    "print_table", "write_json", "write_html", "atomic_write_bytes", "temp_file_beside", "save_figure", "new_figure",
    "format_metric",
]

DEFAULT_METRICS = ("accuracy", "nll", "brier", "ece")


def format_metric(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name in ("accuracy", "auc", "error") or name.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    return f"{value:.4f}"


def print_table(
    rows: Sequence[dict[str, Any]],
    *,
    title: str = "",
    split: str = "test",
    metrics: Sequence[str] = DEFAULT_METRICS,
    extra_columns: Sequence[str] = (),
    console: Console | None = None,
) -> None:
    """One line per row: its name, the ``split`` metrics, then any top-level ``extra_columns``."""
    table = Table(title=title or None, title_justify="left")
    table.add_column("model / method", style="bold")
    for m in metrics:
        table.add_column(f"{split} {m}", justify="right")
    for c in extra_columns:
        table.add_column(c, justify="right")
    for row in rows:
        values = row.get(split, {})
        cells = [format_metric(m, values.get(m)) for m in metrics]
        cells += [_cell(row.get(c)) for c in extra_columns]
        table.add_row(str(row["name"]), *cells)
    (console or Console()).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def temp_file_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temporary file (descriptor, name) in ``path``'s folder, to be renamed onto ``path``.

    ``tempfile.mkstemp`` creates it readable by its owner only (0600); it gets the mode a plain
    ``open()`` would give instead (0644 under the usual umask), so results stay readable by others.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def new_figure(*args: Any, **kwargs: Any) -> Any:
    """A matplotlib figure on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def write_html(
    path: str | os.PathLike,
    *,
    title: str,
    rows: Sequence[dict[str, Any]],
    figures: Iterable[str | os.PathLike] = (),
    notes: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
) -> Path:
    """A self-contained HTML report: the results table per split, notes, figures embedded as base64 PNG."""
    import base64
    import html

    splits = [s for s in ("test", "val", "train") if any(s in r for r in rows)]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for split in splits:
        present = {m for r in rows for m in r.get(split, {})}
        metrics = [m for m in DEFAULT_METRICS if m in present] + sorted(present - set(DEFAULT_METRICS))
        parts.append(f"<h2>{split}</h2><table><tr><th>model / method</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in metrics]
        parts.append("</tr>")
        for row in rows:
            values = row.get(split, {})
            parts.append(f"<tr><td>{html.escape(str(row['name']))}</td>")
            parts += [f"<td>{format_metric(m, values.get(m))}</td>" for m in metrics]
            parts.append("</tr>")
        parts.append("</table>")
    for note in notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    for figure in figures:
        data = base64.b64encode(Path(figure).read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(Path(figure).name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(Path(figure).name)}</figcaption></figure>")
    if meta:
        parts.append(f"<h2>settings</h2><pre>{html.escape(json.dumps(meta, indent=2, default=_jsonable))}</pre>")
    parts.append("</body></html>\n")
    atomic_write_bytes(path, "".join(parts).encode())
    return Path(path)
