"""Config files that state only what differs from their base.

A config may name another one as its ``base`` (a path relative to the config's folder):

```yaml
# configs/sprites_hamiltonian_skew_cpu.yaml
base: sprites_hamiltonian_cpu.yaml
model:
  init_args:
    operator: skew-H
```

The command line stays one ``--config``: ``cli.py`` hands jsonargparse the merged options
(``load_config``: later values win, mappings merge key by key, lists are replaced, a changed
``class_path`` starts its ``init_args`` anew; jsonargparse's own merge of several ``--config``
files would instead carry over the old class's ``init_args`` that the new class also accepts,
e.g. a ``num_frames`` from one data source to another). Tools that read a config without the
CLI use ``load_config`` too.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "base"


def _read(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"Config {path} must hold a mapping of options, got {type(data).__name__}.")
    return data


def config_chain(path: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """``[(file, its options without base), ...]``, the furthest base first and ``path`` last."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    current: Path | None = Path(path)
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            raise ValueError(f"Config {path}: its bases form a circle through {current}.")
        seen.add(resolved)
        if not current.is_file():
            raise FileNotFoundError(f"Config {current} does not exist (the base of {chain[0][0]})." if chain else f"Config {current} does not exist.")
        data = _read(current)
        base = data.pop(BASE_KEY, None)
        chain.insert(0, (current, data))
        current = current.parent / base if base else None
    return chain


def has_base(path: str | os.PathLike) -> bool:
    """Whether the config file at ``path`` names a ``base``."""
    try:
        return BASE_KEY in _read(Path(path))
    except (OSError, yaml.YAMLError, ValueError):
        return False


def merge(base: Any, update: Any) -> Any:
    """``update`` over ``base`` as jsonargparse merges config files: mappings key by key (a new
    ``class_path`` replaces the mapping, ``init_args`` included), anything else replaced."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return copy.deepcopy(update)
    if "class_path" in update and update.get("class_path") != base.get("class_path"):
        return copy.deepcopy(update)
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The options of a config file with its bases merged in (``base`` removed)."""
    merged: dict[str, Any] = {}
    for _, data in config_chain(path):
        merged = merge(merged, data)
    return merged
