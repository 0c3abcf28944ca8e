"""``callbacks.PredictionWriter``: writes what ``cli.py predict`` produced (``lightning_modules.prediction``).

Under ``output_dir`` (default ``<default_root_dir>/predictions/``):

* ``<panel>/batch<k>.png``: one PNG grid per batch and panel (torchvision ``make_grid``): per item
  one row per clip of the panel (its inputs, then its results), one column per frame; shorter
  clips are padded with white frames.
* ``<output>/<index>.gif`` and ``<output>/<index>.mp4``: every result clip, one file per item
  (``index`` = the item's index in the predicted split), at the model's resolution. MP4 needs
  the ``video`` extra (``pip install -e ".[video]"``: PyAV).
* ``<table>.json``: the judge's class probabilities, one entry per clip.

Every file is written atomically (``utils.io.atomic_output``) on rank zero;
under DDP the ranks' predictions are gathered to rank zero first. Progress: Lightning's bar in
a terminal; in logs and pipes one line per batch (``SCENEMOTION_PROGRESS``).

``cli.py predict`` adds a default ``PredictionWriter`` when the config has none; add one to
``trainer.callbacks`` to choose::

    - class_path: callbacks.PredictionWriter
      init_args: {formats: [png, gif, mp4], fps: 10}
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from einops import rearrange
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from torchvision.utils import make_grid

from callbacks.image_grids import to_pil
from utils.io import atomic_output, atomic_write_text, save_image_atomic
from utils.progress import progress_mode

FORMATS = ("png", "gif", "mp4")


def has_video_backend() -> bool:
    """Whether PyAV (the ``video`` extra) is installed, so MP4 can be written."""
    return importlib.util.find_spec("av") is not None


def clip_frames(clip: torch.Tensor) -> list:
    """``t 3 h w`` in [0, 1] -> list of RGB PIL images."""
    return [to_pil(frame) for frame in clip]


def write_gif(clip: torch.Tensor, path: str | Path, fps: float = 10.0) -> Path:
    """An endlessly looping GIF of ``t 3 h w`` frames (Pillow), written atomically."""
    frames = clip_frames(clip)
    return save_image_atomic(frames[0], path, save_all=True, append_images=frames[1:], duration=int(round(1000 / fps)),
                             loop=0)


def write_mp4(clip: torch.Tensor, path: str | Path, fps: float = 10.0) -> Path:
    """An H.264 MP4 (MPEG-4 part 2 where libx264 is missing) of ``t 3 h w`` frames (PyAV), written atomically.

    Sides are padded to even numbers (yuv420p needs them)."""
    try:
        import av
    except ImportError:
        raise RuntimeError('Writing MP4 needs PyAV: pip install -e ".[video]" (or drop mp4 from formats).') from None
    from fractions import Fraction

    array = (clip.clamp(0, 1) * 255).round().to(torch.uint8)
    array = rearrange(array, "t c h w -> t h w c").cpu().numpy()
    h, w = array.shape[1:3]
    array = np.pad(array, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    path = Path(path)
    with atomic_output(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            try:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.options = {"crf": "18"}
            except (av.codec.codec.UnknownCodecError, ValueError):  # a PyAV build without x264
                stream = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "yuv420p"
            for frame in array:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    return path


def panel_grid(rows: Sequence[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """``3 H W`` grid of ``rows`` (each ``b t 3 h w``): per item its rows, one column per frame."""
    length = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        if r.shape[1] < length:  # white frames after a shorter clip
            r = torch.cat([r, r.new_ones(r.shape[0], length - r.shape[1], *r.shape[2:])], 1)
        padded.append(r)
    stacked = torch.stack(padded, 1)  # b rows t 3 h w
    return make_grid(rearrange(stacked, "b r t c h w -> (b r t) c h w"), nrow=length, padding=padding, pad_value=1.0)


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``cli.py predict`` (module docstring).

    Args:
        output_dir: where to write (default ``<default_root_dir>/predictions``).
        formats: any of ``png`` (grids), ``gif`` and ``mp4`` (one clip per item and result);
            default ``png`` and ``gif``, plus ``mp4`` when PyAV is installed.
        fps: frames per second of GIF and MP4.
        padding: pixels between the images of a grid.
        keep_predictions: keep the tensors in what ``trainer.predict`` returns. Off by default:
            the writer empties each prediction once written, so a large split does not pile
            up in memory (``trainer.predict`` then returns the emptied dicts).
    """

    def __init__(self, output_dir: str | None = None, formats: list[str] | None = None, fps: float = 10.0, padding: int = 2,
                 keep_predictions: bool = False) -> None:
        super().__init__(write_interval="batch")
        if formats is None:
            formats = ["png", "gif"] + (["mp4"] if has_video_backend() else [])
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise ValueError(f"PredictionWriter formats {bad or formats} unknown; choose from {list(FORMATS)}.")
        if "mp4" in formats and not has_video_backend():
            raise ValueError('PredictionWriter: mp4 needs PyAV, which is not installed: pip install -e ".[video]", or drop mp4 from formats.')
        if fps <= 0:
            raise ValueError(f"PredictionWriter fps must be > 0, got {fps}.")
        self.output_dir, self.formats, self.fps, self.padding = output_dir, list(formats), float(fps), int(padding)
        self.keep_predictions = keep_predictions
        self.tables: dict[str, list[dict]] = {}
        self.written: list[Path] = []

    def directory(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "predictions"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tables, self.written = {}, []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not isinstance(prediction, dict) or "outputs" not in prediction:
            raise TypeError(f"PredictionWriter expects the dicts of lightning_modules.prediction, got {type(prediction).__name__}.")
        if trainer.world_size > 1:
            prediction = _gather(pl_module, prediction)
        self._write(trainer, prediction, batch_idx, dataloader_idx)
        if not self.keep_predictions:
            for key in ("inputs", "outputs"):
                prediction[key] = {}

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, prediction: dict, batch_idx: int, dataloader_idx: int) -> None:
        out = self.directory(trainer)
        tag = f"batch{batch_idx:04d}" if dataloader_idx == 0 else f"loader{dataloader_idx}_batch{batch_idx:04d}"
        clips = {**prediction["inputs"], **prediction["outputs"]}
        count = len(self.written)
        if "png" in self.formats:
            for panel, names in prediction["panels"].items():
                grid = panel_grid([clips[n] for n in names], self.padding)
                self.written.append(save_image_atomic(to_pil(grid), out / panel / f"{tag}.png"))
        for name, clip in prediction["outputs"].items():
            for i, index in enumerate(prediction["index"].tolist()):
                if "gif" in self.formats:
                    self.written.append(write_gif(clip[i], out / name / f"{index:05d}.gif", self.fps))
                if "mp4" in self.formats:
                    self.written.append(write_mp4(clip[i], out / name / f"{index:05d}.mp4", self.fps))
        for name, rows in prediction["tables"].items():
            self.tables.setdefault(name, []).extend(rows)
        if progress_mode() == "plain":
            total = trainer.num_predict_batches[dataloader_idx] if trainer.num_predict_batches else "?"
            print(f"[predict] batch {batch_idx + 1}/{total}  wrote {len(self.written) - count} file(s) to {out}", flush=True)

    @rank_zero_only
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self.directory(trainer)
        for name, rows in self.tables.items():
            self.written.append(atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=1) + "\n"))
        rank_zero_info(f"PredictionWriter: wrote {len(self.written)} file(s) to {out}")


def _gather(pl_module: pl.LightningModule, prediction: dict) -> dict:
    """Every rank's prediction on rank zero (a collective: all ranks call it; equal batch sizes,
    which Lightning's distributed predict sampler gives)."""
    flat = lambda x: rearrange(x, "w b ... -> (w b) ...")  # noqa: E731
    out = dict(prediction)
    out["index"] = flat(pl_module.all_gather(prediction["index"].to(pl_module.device))).cpu()
    for key in ("inputs", "outputs"):
        out[key] = {k: flat(pl_module.all_gather(v.to(pl_module.device))).cpu() for k, v in prediction[key].items()}
    if prediction["tables"]:
        import torch.distributed as dist

        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, prediction["tables"])
        out["tables"] = {k: [row for part in gathered for row in part[k]] for k in prediction["tables"]}
    return out
