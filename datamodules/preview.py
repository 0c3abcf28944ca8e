"""Build a dataset (its caches) and write a preview grid PNG of a few clips.

Examples::

    python -m datamodules.preview --source datamodules.MovingMNIST --source.num_digits 2 --out mnist.png
    python -m datamodules.preview --source datamodules.DSVAESprites --split test --clips 6 --out sprites.png
    python -m datamodules.preview --config configs/mnist_equivariant_cpu.yaml --out preview.png

One row per clip, one column per frame (at most ``--frames`` frames). With ``--config`` the
``data.init_args.source`` of a training config is used; ``--source.init_args.*`` options then
override its values (``--source CLASS`` together with ``--config`` is refused: give one).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from torchvision.utils import make_grid, save_image

from datamodules.base import ClipSource
from utils.checks import check_int
from utils.config import load_config
from utils.errors import user_error_message
from utils.io import atomic_output


def preview_rows(source: ClipSource, split: str = "test", clips: int = 8, frames: int = 8,
                 assets_root: str | None = None, cache_dir: str | None = None) -> tuple[torch.Tensor, int]:
    """``(grid (3, H, W), number of rows)``: ``clips`` rows of up to ``frames`` frames of one split
    (the split may hold fewer than ``clips`` clips)."""
    for name, value in (("clips", clips), ("frames", frames)):
        check_int(value, f"--{name}")
    source.prepare(assets_root, cache_dir)
    dataset = source.dataset(split, assets_root, cache_dir)
    if len(dataset) == 0:
        raise ValueError(f"The {split} split of {type(source).__name__} has no clips to preview; choose another --split.")
    count = min(clips, len(dataset))
    stride = max(1, len(dataset) // count)
    rows = []
    for row in range(count):
        index = row * stride
        length = dataset.clip_length(index)
        clip = dataset.get(index, list(range(min(frames, length))))["frames"]
        if clip.shape[0] < frames:  # pad short clips with blank frames so rows align
            clip = F.pad(clip, (0, 0, 0, 0, 0, 0, 0, frames - clip.shape[0]))
        rows.append(clip)
    return make_grid(torch.cat(rows), nrow=frames, padding=2, pad_value=1.0), count


def write_png(image: torch.Tensor, out: str | os.PathLike) -> Path:
    """Save ``image`` atomically (temporary file, then rename)."""
    with atomic_output(out) as tmp:
        save_image(image, tmp)
    return Path(out)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m datamodules.preview", description=__doc__)
    parser.add_argument("--config", default=None, help="a training config; its data source is previewed")
    parser.add_subclass_arguments(ClipSource, "source", required=False, help="the dataset to build and preview")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--assets_root", type=str | None, default=None)
    parser.add_argument("--cache_dir", type=str | None, default=None)
    parser.add_argument("--out", default="preview.png")
    return parser


def source_from_config(path: str) -> dict:
    """The ``data.init_args.source`` section of a training config (as a parser namespace)."""
    import yaml

    if not Path(path).is_file():
        raise SystemExit(f"error: config {path} does not exist (--config takes a training config, e.g. configs/mnist_equivariant_cpu.yaml).")
    try:
        config = load_config(path)  # a variant's base merged in
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SystemExit(f"error: {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}.") from None
    try:
        return config["data"]["init_args"]["source"]
    except (KeyError, TypeError):
        raise SystemExit(f"error: {path} has no data.init_args.source section to preview.") from None


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    configs = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "--config"] + [t[9:] for t in argv if t.startswith("--config=")]
    if configs:
        if any(token == "--source" or token.startswith("--source=") for token in argv):
            parser.error("--source and --config both choose the dataset: give one (--source.init_args.* may override the config's)")
        # the config's source first, so that --source.init_args.* on the command line override it
        argv = ["--source", json.dumps(source_from_config(configs[-1]))] + argv
    args = parser.parse_args(argv)
    for name in ("clips", "frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.source is None:
        parser.error("give a dataset with --source CLASS (e.g. datamodules.MovingMNIST) or --config FILE")
    try:
        source = parser.instantiate_classes(args).source
        grid, count = preview_rows(source, args.split, args.clips, args.frames, args.assets_root, args.cache_dir)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        parser.exit(2, f"error: {message}\n")
    out = write_png(grid, args.out)
    capped = f" (the split has only {count})" if count < args.clips else ""
    print(f"wrote {out} ({count} clips of the {args.split} split of {type(source).__name__}{capped})")
    return out



if __name__ == "__main__":
    main()
