"""Derived-dataset cache: uint8 (or other) numpy arrays keyed by their build parameters.

A dataset is built once into ``<cache_root>/<name>-<key>/`` where ``key`` hashes the build
parameters (and a format version). Files are written into a temporary sibling folder that is
renamed into place only when complete, so an interrupted build never leaves a half-written
cache; arrays are memory-mapped on read. The cache root is the ``cache_dir`` argument, then
``$SCENEMOTION_CACHE``, then ``~/.cache/scenemotion``.

Integrity: ``meta.json`` records every array's shape, dtype, file size and SHA-256. Every open
checks the sizes against the files (cheap: the ``.npy`` headers and ``stat``); a cache that fails
(no ``meta.json``, a truncated or missing array) is rebuilt with a message. The checksums are
checked by ``python -m datamodules.assets verify`` (``verify_caches``), which removes a corrupt
cache so that the next run rebuilds it. Temporary folders of builds that were killed are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from utils.io import sha256_of

ENV_CACHE = "SCENEMOTION_CACHE"
META = "meta.json"
FORMAT = 2  # 2: meta.json records shape, dtype, bytes and sha256 of every array
STALE_SECONDS = 24 * 3600  # a temporary folder of another host (or of unknown origin) older than this is stale


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


def _log(message: str) -> None:
    print(f"[cache] {message}", file=sys.stderr, flush=True)


def _owner() -> str:
    """``<host>-<pid>``: temporary folder names carry their builder, so a dead builder's are found."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _npy_expected_size(path: Path) -> tuple[int, tuple[int, ...], str]:
    """``(file size the header implies, shape, dtype string)`` of one ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        offset = f.tell()
    return offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, tuple(shape), dtype.str


def cache_problem(folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot be used (missing files, sizes), or ``None``; no checksums."""
    meta_path = folder / META
    if not meta_path.is_file():
        return f"no {META} (an incomplete build or a foreign folder)"
    try:
        meta = json.loads(meta_path.read_text())
        keys = list(meta["arrays"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META} is unreadable"
    recorded = meta.get("files", {})
    for key in keys:
        path = folder / f"{key}.npy"
        if not path.is_file():
            return f"{path.name} is missing"
        size = path.stat().st_size
        try:
            expected, shape, dtype = _npy_expected_size(path)
        except (OSError, ValueError, SyntaxError):
            return f"{path.name} is not a readable .npy file"
        if size != expected:
            return f"{path.name} has {size} bytes but its header needs {expected} (truncated?)"
        info = recorded.get(key)
        if info and (info.get("bytes") != size or list(info.get("shape", shape)) != list(shape) or info.get("dtype", dtype) != dtype):
            return f"{path.name} ({size} bytes, {dtype} {list(shape)}) does not match {META} ({info})"
    return None


def remove_stale_temp_dirs(root: Path) -> list[Path]:
    """Remove temporary build folders (``.<name>-<key>.*``) whose builder is gone; returns them.

    A folder is stale when its builder ran on this host and is no longer alive, or when it is
    older than ``STALE_SECONDS`` (builders on other hosts, folders without an owner tag).
    """
    removed = []
    host = socket.gethostname().replace(".", "_")
    now = time.time()
    for path in root.glob(".*"):
        if not path.is_dir():
            continue
        parts = path.name[1:].split(".")
        if len(parts) < 2 or not re.fullmatch(r".+-[0-9a-f]{16}", parts[0]):
            continue
        owner = parts[1].rsplit("-", 1)
        alive = True
        if len(owner) == 2 and owner[0] == host and owner[1].isdigit():
            alive = _pid_alive(int(owner[1]))
        try:
            old = now - path.stat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if not alive or old:
            shutil.rmtree(path, ignore_errors=True)
            _log(f"removed {path} (the temporary folder of an interrupted build)")
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(folder: Path, root: Path) -> None:
    """Move a broken cache folder aside (one rename), then delete it."""
    trash = root / f".{folder.name}.{_owner()}.discarded"
    try:
        os.replace(folder, trash)
    except OSError:
        return  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def _write(final: Path, name: str, params: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` and their ``meta.json`` into a temporary sibling folder, then rename it to ``final``."""
    from utils.io import current_umask

    root = final.parent
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.{_owner()}."))
    try:
        files = {}
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            path = tmp / f"{key}.npy"
            np.save(path, value, allow_pickle=False)
            files[key] = {"shape": list(value.shape), "dtype": value.dtype.str, "bytes": path.stat().st_size, "sha256": sha256_of(path)}
        meta = {"format": FORMAT, "name": name, "params": dict(params), "arrays": sorted(arrays), "files": files}
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        if final.exists() and cache_problem(final) is not None:
            _discard(final, root)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process (e.g. another DDP rank) finished first: keep its copy.
            if cache_problem(final) is not None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_arrays(
    name: str,
    params: Mapping,
    build: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike | None = None,
    mmap: bool = True,
) -> dict[str, np.ndarray]:
    """Return the arrays of a derived dataset, building and caching them on first use.

    ``build`` returns ``{array name: np.ndarray}``; it is called only when no complete cache
    for ``(name, params)`` exists (or the one there fails its size checks: rebuilt with a
    message). The result is read back memory-mapped (``mmap=True``).
    """
    root = resolve_cache_dir(cache_dir)
    remove_stale_temp_dirs(root)
    final = root / f"{name}-{cache_key(params)}"
    problem = cache_problem(final) if final.exists() else "missing"
    if problem is not None:
        if final.exists():
            _log(f"{final}: {problem}; rebuilding it.")
        _write(final, name, params, build())
    meta = json.loads((final / META).read_text())
    return {key: np.load(final / f"{key}.npy", mmap_mode="r" if mmap else None) for key in meta["arrays"]}


def verify_caches(cache_dir: str | os.PathLike | None = None, remove: bool = True) -> list[tuple[Path, str | None]]:
    """Check every cache under the root, checksums included: ``[(folder, problem or None)]``.

    A cache that fails is removed when ``remove`` (derived data: the next run rebuilds it).
    Caches of format 1 (no checksums recorded) are checked by size only.
    """
    root = resolve_cache_dir(cache_dir)
    remove_stale_temp_dirs(root)
    results: list[tuple[Path, str | None]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = cache_problem(folder)
        if problem is None:
            files = json.loads((folder / META).read_text()).get("files", {})
            for key, info in sorted(files.items()):
                if "sha256" in info and sha256_of(folder / f"{key}.npy") != info["sha256"]:
                    problem = f"{key}.npy does not match its SHA-256 in {META} (corrupt)"
                    break
        if problem is not None and remove:
            _discard(folder, root)
            problem += "; removed (the next run rebuilds it)"
        results.append((folder, problem))
    return results
