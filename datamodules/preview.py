"""Build a dataset (its caches) and write a preview grid PNG of a few clips.

Examples::

    python -m datamodules.preview --source datamodules.MovingMNIST --source.num_digits 2 --out mnist.png
    python -m datamodules.preview --source datamodules.DSVAESprites --split test --clips 6 --out sprites.png
    python -m datamodules.preview --config configs/mnist_equivariant_cpu.yaml --out preview.png

One row per clip, one column per frame (at most ``--frames`` frames). With ``--config`` the
``data.init_args.source`` of a training config is used.
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
from lightning_modules.common import atomic_output


def preview_grid(source: ClipSource, split: str = "test", clips: int = 8, frames: int = 8,
                 assets_root: str | None = None, cache_dir: str | None = None) -> torch.Tensor:
    """(3, H, W) grid image: ``clips`` rows of up to ``frames`` frames of one split."""
    source.prepare(assets_root, cache_dir)
    dataset = source.dataset(split, assets_root, cache_dir)
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
    return make_grid(torch.cat(rows), nrow=frames, padding=2, pad_value=1.0)


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

    with open(path) as f:
        config = yaml.safe_load(f)
    try:
        return config["data"]["init_args"]["source"]
    except (KeyError, TypeError):
        raise SystemExit(f"error: {path} has no data.init_args.source section to preview.") from None


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv + ["--source", json.dumps(source_from_config(args.config))])
    if args.source is None:
        parser.error("give a dataset with --source CLASS (e.g. datamodules.MovingMNIST) or --config FILE")
    source = parser.instantiate_classes(args).source
    grid = preview_grid(source, args.split, args.clips, args.frames, args.assets_root, args.cache_dir)
    out = write_png(grid, args.out)
    print(f"wrote {out} ({args.clips} clips of the {args.split} split of {type(source).__name__})")
    return out


if __name__ == "__main__":
    main()
