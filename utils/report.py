"""Plain-text result tables and result files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from pytorch_lightning.utilities import rank_zero_only

from utils.io import atomic_write_text


def format_table(title: str, rows: Mapping[str, Mapping[str, Any]], columns: list[str]) -> str:
    """A plain-text table: one row per key of ``rows``, one column per name in ``columns``."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
        return "-" if value is None else str(value)

    header = [""] + columns
    body = [[name] + [fmt(row.get(col)) for col in columns] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([title, sep, line(header), sep] + [line(r) for r in body] + [sep])


@rank_zero_only
def write_results(directory: str | os.PathLike, name: str, results: Mapping[str, Any], table: str | None = None) -> Path:
    """Print ``table`` (if given) and write ``results`` as ``<directory>/<name>.json``."""
    if table:
        print("\n" + table + "\n", flush=True)
    return atomic_write_text(Path(directory) / f"{name}.json", json.dumps(results, indent=2, default=float) + "\n")
