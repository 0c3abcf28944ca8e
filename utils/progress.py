"""The one progress switch: tqdm bars in a terminal, plain lines in logs and pipes.

``progress_mode`` decides for the training bar (``callbacks.ProgressBar``), dataset builds
(``progress_bar``) and evaluation loops (``counter``).
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

PROGRESS_ENV = "SCENEMOTION_PROGRESS"


def progress_mode() -> str:
    """``'tqdm'`` in a terminal, ``'plain'`` lines in logs and pipes; ``$SCENEMOTION_PROGRESS``
    (``tqdm`` or ``plain``) overrides. The one place training and evaluation progress decide."""
    mode = os.environ.get(PROGRESS_ENV) or ("tqdm" if sys.stdout.isatty() else "plain")
    if mode not in ("tqdm", "plain"):
        raise ValueError(f"{PROGRESS_ENV} must be 'tqdm' or 'plain', got {mode!r}.")
    return mode


def progress_bar(iterable: Iterable, **kwargs) -> Iterable:
    """``tqdm(iterable, **kwargs)`` (dataset builds: one bar over cells, characters or clips)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return iterable
    return tqdm(iterable, **kwargs)


class PlainCounter:
    """One line per 10% (logs and pipes)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self.next = total, desc, 0, 0.1

    def update(self, n: int) -> None:
        self.done += n
        if self.done >= self.next * self.total or self.done == self.total:
            print(f"[{self.desc}] {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)", flush=True)
            while self.next * self.total <= self.done:
                self.next += 0.1

    def close(self) -> None:
        pass


def counter(total: int, desc: str, enabled: bool, unit: str = "ex"):
    """A progress counter over ``total`` items (``update(n)`` / ``close()``), or ``None`` when not ``enabled``:
    tqdm in a terminal, ``PlainCounter`` lines elsewhere (``progress_mode``)."""
    if not enabled:
        return None
    if progress_mode() == "plain":
        return PlainCounter(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)
