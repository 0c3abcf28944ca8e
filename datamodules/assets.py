"""Locate, verify and (with internet) fetch the raw assets.

The assets root is resolved from, in order: an explicit argument (every DataModule and
command has ``assets_root``), the ``SCENEMOTION_ASSETS`` environment variable, then the
default ``<repo>/../shared/data``. Every file a dataset reads is checked against the SHA-256
in ``assets_manifest.json`` (built from the PROVENANCE files' published checksums and the
files themselves). ``fetch_assets`` downloads the same files from their upstream homes for a
user with internet; nothing in the tests or CI ever downloads.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import sys
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from datamodules.base import AssetError  # noqa: F401 (datamodules.assets.AssetError)
from utils.io import sha256_of  # noqa: F401 (datamodules.assets.sha256_of)

ENV_ASSETS = "SCENEMOTION_ASSETS"
MANIFEST_PATH = Path(__file__).with_name("assets_manifest.json")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS_ROOT = REPO_ROOT.parent / "shared" / "data"

# Asset groups: folder name -> what it is (for messages).
GROUPS = {
    "mnist": "the MNIST IDX files",
    "lpc": "the Universal LPC spritesheet layers",
    "reed_sprites": "Reed et al. sprites (numpy repack)",
    "reed_sprites_mat_sample": "Reed et al. sprites, original MATLAB 7.3 sample",
}

# Upstream homes (see the PROVENANCE.md files). Each entry maps an asset-relative path
# pattern to a URL template; ``{name}`` is the file name, ``{path}`` the path inside the group.
UPSTREAM = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/{name}",
        "http://yann.lecun.com/exdb/mnist/{name}",
    ],
    "lpc": [
        "https://raw.githubusercontent.com/jrconway3/Universal-LPC-spritesheet/"
        "2668274d5a96c91584172f2d299b90f0a8c0caac/{subpath}",
    ],
    # Reed sprites: the original .mat files; the .npy.xz repack is rebuilt locally from them.
    "reed_sprites": [
        "https://raw.githubusercontent.com/NotAnyMike/visual_dynamics/"
        "e8430c7bb736ce642653227ce4f3773e48c5fe5a/data/sprites/{name}",
    ],
    "reed_sprites_mat_sample": [
        "https://raw.githubusercontent.com/NotAnyMike/visual_dynamics/"
        "e8430c7bb736ce642653227ce4f3773e48c5fe5a/data/sprites/{name}",
    ],
}


def resolve_assets_root(assets_root: str | os.PathLike | None = None) -> Path:
    """The assets root: argument, then ``$SCENEMOTION_ASSETS``, then ``<repo>/../shared/data``."""
    if assets_root is not None:
        root, origin = Path(assets_root), "the assets_root argument"
    elif os.environ.get(ENV_ASSETS):
        root, origin = Path(os.environ[ENV_ASSETS]), f"${ENV_ASSETS}"
    else:
        root, origin = DEFAULT_ASSETS_ROOT, "the default location"
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise AssetError(
            f"Assets root {root} (from {origin}) does not exist. Point the project at the folder "
            f"holding mnist/, lpc/, reed_sprites/ with --data.assets_root PATH or ${ENV_ASSETS}=PATH, "
            f"or fetch the files with `python -m datamodules.assets fetch --root PATH`."
        )
    return root


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, dict]:
    """``{relative path: {"sha256", "size"}}`` for every known asset file."""
    with open(MANIFEST_PATH) as f:
        return json.load(f)["files"]


def manifest_files(group: str) -> list[str]:
    """Relative paths of every manifest file in one asset group (e.g. ``"mnist"``)."""
    if group not in GROUPS:
        raise AssetError(f"Unknown asset group {group!r}; known groups: {sorted(GROUPS)}.")
    return sorted(p for p in load_manifest() if p.split("/", 1)[0] == group)


def file_problems(root: Path, relpaths: Iterable[str]) -> list[str]:
    """One message per file that is unknown, missing or does not match its manifest SHA-256."""
    manifest = load_manifest()
    problems = []
    for rel in relpaths:
        path = root / rel
        if rel not in manifest:
            problems.append(f"{rel} is not a known asset (no checksum in {MANIFEST_PATH.name}).")
        elif not path.is_file():
            problems.append(
                f"Asset file {path} is missing. Restore it from the assets bundle, or run "
                f"`python -m datamodules.assets fetch --root {root}` on a machine with internet."
            )
        elif (actual := sha256_of(path)) != manifest[rel]["sha256"]:
            problems.append(
                f"Asset file {path} is corrupt: SHA-256 {actual} but expected {manifest[rel]['sha256']}. "
                f"Replace it with the original (see {rel.split('/', 1)[0]}/PROVENANCE.md), or run "
                f"`python -m datamodules.assets fetch --root {root}`."
            )
    return problems


def verify_files(root: Path, relpaths: Iterable[str]) -> None:
    """Check that each file exists and matches its manifest SHA-256; raise ``AssetError`` naming every bad one."""
    problems = file_problems(root, relpaths)
    if problems:
        raise AssetError("\n".join(problems))


def asset_path(rel: str, assets_root: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Absolute path of one asset file, verified against its checksum."""
    root = resolve_assets_root(assets_root)
    if verify:
        verify_files(root, [rel])
    return root / rel


def verify_group(group: str, assets_root: str | os.PathLike | None = None) -> Path:
    """Verify every file of one asset group and return the assets root."""
    root = resolve_assets_root(assets_root)
    verify_files(root, manifest_files(group))
    return root


# --------------------------------------------------------------------------- fetching
def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    from utils.io import atomic_output

    with atomic_output(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
        shutil.copyfileobj(resp, out)


def _repack_reed_mat(mat_path: Path, dest: Path) -> None:
    """Rebuild one ``sprites_<k>.npy.xz`` from the original ``.mat`` (PROVENANCE recipe)."""
    import numpy as np

    from datamodules.reed_files import read_reed_mat
    from utils.io import atomic_output

    sprites = read_reed_mat(mat_path)
    with atomic_output(dest) as tmp, lzma.open(tmp, "wb") as f:
        np.save(f, sprites["rgba"], allow_pickle=False)


def fetch_assets(root: str | os.PathLike, groups: Iterable[str] = tuple(GROUPS), timeout: float = 60.0) -> None:
    """Download missing or corrupt asset files from upstream into ``root`` (needs internet).

    Files are written to a temporary name and renamed only once their checksum matches.
    The Reed ``.npy.xz`` repacks are rebuilt from the original ``.mat`` files, whose MD5s
    are in ``reed_sprites/MD5SUMS_original_mat.txt``; the repack is checked by content
    (numpy array equality is what the loaders rely on), not by its xz bytes.
    """
    root = Path(root).expanduser().resolve()
    manifest = load_manifest()
    for group in groups:
        for rel in manifest_files(group):
            path = root / rel
            if path.is_file() and sha256_of(path) == manifest[rel]["sha256"]:
                continue
            name = rel.rsplit("/", 1)[-1]
            subpath = rel.split("/", 2)[-1] if group == "lpc" else name
            if name.endswith(".md") and name == "PROVENANCE.md":
                continue  # documentation ships with the bundle, not upstream
            errors = []
            for template in UPSTREAM[group]:
                source_name = name.replace(".npy.xz", ".mat")
                url = template.format(name=source_name, subpath=subpath)
                try:
                    print(f"fetching {url}", file=sys.stderr)
                    if name.endswith(".npy.xz"):
                        mat = path.with_suffix("").with_suffix(".mat")
                        _download(url, mat, timeout)
                        _repack_reed_mat(mat, path)
                        mat.unlink()
                    else:
                        _download(url, path, timeout)
                        verify_files(root, [rel])
                    break
                except Exception as exc:  # noqa: BLE001 - report every mirror's failure
                    errors.append(f"{url}: {exc}")
            else:
                raise AssetError(
                    f"Could not fetch {rel} into {root}: " + "; ".join(errors)
                    + ". Check the internet connection or copy the assets bundle by hand."
                )


# --------------------------------------------------------------------------- maintenance
def write_manifest(root: Path) -> None:
    """(Maintainers) Record SHA-256 and size of every file under ``root``'s asset groups."""
    files = {}
    for group in GROUPS:
        for path in sorted((root / group).rglob("*")):
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                files[rel] = {"sha256": sha256_of(path), "size": path.stat().st_size}
    from utils.io import atomic_write_text

    atomic_write_text(MANIFEST_PATH, json.dumps({"files": files}, indent=0, sort_keys=True) + "\n")


def verify_all(assets_root: str | None = None, cache_dir: str | None = None) -> None:
    """``verify``: every asset group and every dataset cache, reporting each bad file (not only the first).

    A corrupt cache is removed (the next run rebuilds it). Raises ``AssetError`` when any asset
    file failed; caches never fail the command (they are derived data).
    """
    from datamodules.cache import verify_caches

    root = resolve_assets_root(assets_root)
    bad = []
    for group in GROUPS:
        files = manifest_files(group)
        if not (root / group).is_dir():
            problems = [f"Asset folder {root / group} ({GROUPS[group]}, {len(files)} files) is missing. Restore it from "
                        f"the assets bundle, or run `python -m datamodules.assets fetch --root {root}` with internet."]
        else:
            problems = file_problems(root, files)
        print(f"ok  {group}: {len(files)} files under {root / group}" if not problems
              else f"BAD {group}: {len(problems)} problem(s) under {root / group}")
        for problem in problems:
            print(f"    {problem}")
        bad += problems
    for folder, problem in verify_caches(cache_dir):
        print(f"BAD cache {folder}: {problem}" if problem else f"ok  cache {folder.name}")
    if bad:
        more = f" (and {len(bad) - 1} more problem(s), listed above)" if len(bad) > 1 else ""
        raise AssetError(bad[0] + more)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every asset file and every dataset cache against its checksum")
    verify.add_argument("--root", default=None)
    verify.add_argument("--cache_dir", default=None, help="cache root (default: $SCENEMOTION_CACHE, else ~/.cache/scenemotion)")
    fetch = sub.add_parser("fetch", help="download missing/corrupt files from upstream (internet)")
    fetch.add_argument("--root", required=True)
    fetch.add_argument("--groups", nargs="*", default=list(GROUPS))
    manifest = sub.add_parser("write-manifest", help="(maintainers) rebuild assets_manifest.json")
    manifest.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            verify_all(args.root, args.cache_dir)
        elif args.command == "fetch":
            fetch_assets(args.root, args.groups)
        else:
            write_manifest(resolve_assets_root(args.root))
    except AssetError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
