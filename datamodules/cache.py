"""Derived-dataset cache: uint8 (or other) numpy arrays keyed by their build parameters.

A dataset is built once into ``<cache_root>/<name>-<key>/`` where ``key`` hashes the build
parameters (and a format version). Files are written into a temporary sibling folder that is
renamed into place only when complete, so an interrupted build never leaves a half-written
cache; arrays are memory-mapped on read. The cache root is the ``cache_dir`` argument, then
``$SCENEMOTION_CACHE``, then ``~/.cache/scenemotion``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

ENV_CACHE = "SCENEMOTION_CACHE"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: argument, then ``$SCENEMOTION_CACHE``, then ``~/.cache/scenemotion``."""
    if cache_dir is None:
        cache_dir = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "scenemotion"
    root = Path(cache_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_key(params: Mapping) -> str:
    """Stable short hash of JSON-serialisable build parameters."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_arrays(
    name: str,
    params: Mapping,
    build: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
    mmap: bool = True,
) -> dict[str, np.ndarray]:
    """Return the arrays of a derived dataset, building and caching them on first use.

    ``build`` returns ``{array name: np.ndarray}``; it is called only when no complete cache
    for ``(name, params)`` exists. The result is read back memory-mapped (``mmap=True``).
    """
    root = resolve_cache_dir(cache_dir)
    final = root / f"{name}-{cache_key(params)}"
    meta_path = final / "meta.json"
    if not meta_path.is_file():
        arrays = build()
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        try:
            for key, value in arrays.items():
                np.save(tmp / f"{key}.npy", np.ascontiguousarray(value), allow_pickle=False)
            meta = {"name": name, "params": dict(params), "arrays": sorted(arrays)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process (e.g. another DDP rank) finished first: keep its copy.
                if not meta_path.is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    return {key: np.load(final / f"{key}.npy", mmap_mode="r" if mmap else None) for key in meta["arrays"]}
