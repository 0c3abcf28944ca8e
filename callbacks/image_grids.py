"""Image-grid callbacks: motion / background swaps, animation analogies, image-to-sequence generation.

Each callback picks a fixed, seeded set of clips from the DataModule's split
(``trainer.datamodule.datasets['val']``, or ``'test'`` during ``cli.py test``) the first time it
renders, so every epoch shows the same examples. After each validation (every
``every_n_validations``-th; never during the sanity check) and after testing it renders one grid
on rank zero, with the model in eval mode under ``torch.no_grad``, and

* logs it to every attached logger that takes images (TensorBoard ``add_image``, W&B
  ``log_image``; other loggers are skipped) under ``<split>/<name>``;
* writes ``<run dir>/images/<name>_step<global_step>.png`` (``<name>_test_...`` for test), where
  the run dir is the first TensorBoard/CSV logger's version folder, else ``default_root_dir``;
* with ``gif=True`` also ``<...>.gif``: an animation whose frame ``t`` is column ``t`` of the grid.

The grid is ``rows x columns`` images (torchvision ``make_grid``, white padding); columns are
time steps. Which rows a callback draws depends on the methods the LightningModule (or one of
its sub-modules) has, so the same callback works for either model where it makes sense:

``SwapGrid`` (4 rows per pair of clips ``a``, ``b``):
    Hamiltonian (``swap_motion``; paper 004 Fig. 3): ``a``, ``b``, content of ``a`` with the
    motion of ``b``, content of ``b`` with the motion of ``a``.
    Equivariant (``swap_background``; paper 000 Fig. 5 row 1): ``a``, ``b``, the character of
    ``a`` on the background of ``b`` (frame ``k``: ``g(fc(a_k) + fb(b_k))``), and ``b`` on ``a``'s.
``AnalogyGrid`` (equivariant; 6 rows per triple ``x1``, ``x2``, ``x3``; paper 000 Fig. 2 / 4 / 5):
    ground truth ``x1`` (character), ``x2`` (background), ``x3`` (animation); then
    ``x1``'s character on ``x2``'s background (frame ``k``: ``g(fc(x1_k) + fb(x2_k))``, identity transform);
    ``x1_0`` animated by ``x3_0 -> x3_k`` on its own background (``h(x1_0, x3_0, x3_k, x1_0)``);
    both at once (``h(x1_0, x3_0, x3_k, x2_k)``).
``GenerationGrid`` (Hamiltonian, ``generate``; paper 004 Fig. 4): for each example frame one row
    per action, ``length`` frames each (default twice the training clip length, the long-horizon
    setting); frame 0 is the model's rendering of the input frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from einops import rearrange
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid

from utils.io import save_image_atomic
from utils.torch_utils import eval_mode
from utils.trainer import run_dir

MAX_DEFAULT_FRAMES = 8


def find_method(pl_module: torch.nn.Module, name: str) -> Callable | None:
    """``name`` on the LightningModule itself, else on its first sub-module that has it."""
    for module in pl_module.modules():
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def to_pil(grid: torch.Tensor) -> Image.Image:
    """``3 H W`` float in [0, 1] -> RGB PIL image."""
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(rearrange(array, "c h w -> h w c").cpu().numpy())


class ImageGridCallback(pl.Callback):
    """Base class: fixed examples, rendering, logging and files (see the module docstring).

    Args:
        num_examples: pairs (``SwapGrid``), triples (``AnalogyGrid``) or frames (``GenerationGrid``).
        num_frames: frames per clip (columns); default: the DataModule's ``num_frames``, else
            the shortest chosen clip (at most 8).
        every_n_validations: render after every n-th validation run.
        seed: seed of the example choice.
        gif: also write an animated GIF (frame ``t`` = column ``t``).
        gif_fps: GIF frames per second.
        padding: pixels between images.
        name: tag / file name (default: the callback's ``default_name``).
    """

    default_name = "grid"
    clips_per_example = 1

    def __init__(
        self,
        num_examples: int = 4,
        num_frames: int | None = None,
        every_n_validations: int = 1,
        seed: int = 0,
        gif: bool = False,
        gif_fps: float = 4.0,
        padding: int = 2,
        name: str | None = None,
    ) -> None:
        super().__init__()
        for arg, value, low in (("num_examples", num_examples, 1), ("every_n_validations", every_n_validations, 1), ("padding", padding, 0)):
            if value < low:
                raise ValueError(f"{type(self).__name__}: {arg} must be >= {low}, got {value}.")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"{type(self).__name__}: num_frames must be >= 1 or null, got {num_frames}.")
        if gif_fps <= 0:
            raise ValueError(f"{type(self).__name__}: gif_fps must be > 0, got {gif_fps}.")
        self.num_examples, self.num_frames, self.every_n_validations = num_examples, num_frames, every_n_validations
        self.seed, self.gif, self.gif_fps, self.padding = seed, gif, gif_fps, padding
        self.name = name or self.default_name
        self._examples: dict[str, dict[str, torch.Tensor]] = {}
        self._validations = 0
        #: after each render: ``(rows, columns)`` of the grid, the files written, the row labels
        self.last_layout: tuple[int, int] | None = None
        self.last_files: list[Path] = []
        self.row_labels: list[str] = []

    # ------------------------------------------------------------------ to override
    def build(self, pl_module: pl.LightningModule, examples: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the grid as ``(rows, columns, 3, h, w)`` in [0, 1]."""
        raise NotImplementedError

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Raise a clear error when the model lacks the methods this grid needs."""

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.check_model(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0:
            self.render(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.render(trainer, pl_module, "test")

    # ------------------------------------------------------------------ examples
    def examples(self, trainer: pl.Trainer, split: str) -> dict[str, torch.Tensor]:
        """The fixed clips of ``split``: ``frames`` (n, t, 3, h, w) and ``action`` (n,) when labelled."""
        if split in self._examples:
            return self._examples[split]
        datamodule = trainer.datamodule
        datasets = getattr(datamodule, "datasets", None)
        if not isinstance(datasets, dict):
            raise RuntimeError(
                f"{type(self).__name__} needs a scenemotion DataModule (datamodules.PairFramesDataModule or "
                f"ActionSequenceDataModule) whose `datasets` dict holds the {split!r} split; got {type(datamodule).__name__}."
            )
        if split not in datasets:
            datamodule.setup("validate" if split == "val" else "test")
        dataset = datasets[split]
        needed = self.num_examples * self.clips_per_example
        if len(dataset) < 1:
            raise RuntimeError(f"{type(self).__name__}: the {split} split is empty; no examples to draw.")
        rng = np.random.default_rng(self.seed)
        indices = rng.choice(len(dataset), size=needed, replace=len(dataset) < needed).tolist()
        length = self.num_frames or getattr(datamodule, "num_frames", None)
        if length is None:
            length = min(MAX_DEFAULT_FRAMES, *(dataset.clip_length(i) for i in indices))
        short = [i for i in indices if dataset.clip_length(i) < length]
        if short:
            raise ValueError(
                f"{type(self).__name__}: clip {short[0]} of the {split} split has {dataset.clip_length(short[0])} frames, "
                f"fewer than num_frames={length}; lower the callback's num_frames."
            )
        items = [dataset.get(i, list(range(length))) for i in indices]
        examples = {"frames": torch.stack([item["frames"] for item in items])}
        if all("action" in item for item in items):
            examples["action"] = torch.stack([torch.as_tensor(item["action"]) for item in items]).long()
        self._examples[split] = examples
        return examples

    # ------------------------------------------------------------------ rendering
    @rank_zero_only
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> torch.Tensor:
        """Build, log and save one grid; returns it as ``3 H W``."""
        examples = {k: v.to(pl_module.device) for k, v in self.examples(trainer, split).items()}
        with eval_mode(pl_module), torch.no_grad(), trainer.precision_plugin.forward_context():
            cells = self.build(pl_module, examples)
        cells = cells.detach().float().clamp(0, 1).cpu()
        rows, columns = cells.shape[:2]
        grid = make_grid(rearrange(cells, "r c ch h w -> (r c) ch h w"), nrow=columns, padding=self.padding, pad_value=1.0)
        self.last_layout = (rows, columns)
        step = trainer.global_step
        tag = f"{split}/{self.name}"
        caption = f"{rows}x{columns}; rows per example: " + ", ".join(self.row_labels)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[rearrange(grid, "c h w -> h w c").numpy()], step=step, caption=[caption])
        stem = f"{self.name}{'_test' if split == 'test' else ''}_step{step}"
        folder = run_dir(trainer) / "images"
        self.last_files = [save_image_atomic(to_pil(grid), folder / f"{stem}.png")]
        if self.gif:
            frames = [to_pil(make_grid(cells[:, t], nrow=1, padding=self.padding, pad_value=1.0)) for t in range(columns)]
            self.last_files.append(
                save_image_atomic(frames[0], folder / f"{stem}.gif", save_all=True, append_images=frames[1:],
                                  duration=int(round(1000 / self.gif_fps)), loop=0)
            )
        return grid

    def _require(self, pl_module: pl.LightningModule, variants: dict[str, tuple[str, ...]]) -> dict[str, Callable]:
        """The methods of the first model variant whose methods all exist: ``{name: method}``.

        A callback dispatches on which capability it got (``"swap_motion" in methods``); the
        variant names (``"a motion model"``) only word the error when none fits.
        """
        for names in variants.values():
            methods = {name: find_method(pl_module, name) for name in names}
            if all(m is not None for m in methods.values()):
                return methods  # type: ignore[return-value]
        wanted = " or ".join(f"{variant} ({', '.join(names)})" for variant, names in variants.items())
        raise TypeError(f"{type(self).__name__} needs {wanted}; {type(pl_module).__name__} does not have these methods.")


def _per_frame(fn: Callable, *clips: torch.Tensor | None) -> torch.Tensor:
    """Apply a frame manipulation to every time step: clips ``n t c h w`` -> ``n t c h w``."""
    n, t = next(c for c in clips if c is not None).shape[:2]
    flat = [None if c is None else rearrange(c, "n t c h w -> (n t) c h w") for c in clips]
    return rearrange(fn(*flat), "(n t) c h w -> n t c h w", n=n, t=t)


def _hold(frame: torch.Tensor, t: int) -> torch.Tensor:
    """``n c h w -> n t c h w`` (the same frame at every time step)."""
    return frame[:, None].expand(-1, t, *frame.shape[1:])


def _interleave(*rows: torch.Tensor) -> torch.Tensor:
    """Rows ``k`` of each example together: ``[n t c h w] * r -> (n r) t c h w``."""
    return rearrange(torch.stack(rows, dim=1), "n r t c h w -> (n r) t c h w")


class SwapGrid(ImageGridCallback):
    """Motion swap (Hamiltonian, paper 004 Fig. 3) or background swap (equivariant, paper 000
    Fig. 5 row 1) between ``num_examples`` pairs of clips: ``4 * num_examples`` rows x ``t``."""

    default_name = "swap_grid"
    clips_per_example = 2
    VARIANTS = {"a motion model": ("swap_motion",), "a scene model": ("swap_background",)}

    def check_model(self, pl_module: pl.LightningModule) -> None:
        self._require(pl_module, self.VARIANTS)

    def build(self, pl_module: pl.LightningModule, examples: dict[str, torch.Tensor]) -> torch.Tensor:
        methods = self._require(pl_module, self.VARIANTS)
        n = self.num_examples
        a, b = examples["frames"][:n], examples["frames"][n:]
        if "swap_motion" in methods:
            if "action" not in examples:
                raise ValueError("SwapGrid (motion swap) needs action-labelled clips (the dataset has no 'action').")
            act_a, act_b = examples["action"][:n], examples["action"][n:]
            ab, ba = methods["swap_motion"](a, b, act_a, act_b)
            self.row_labels = ["a", "b", "content a + motion b", "content b + motion a"]
        else:
            swap = methods["swap_background"]
            ab = _per_frame(lambda x, bg: swap(x, None, bg), a, b)
            ba = _per_frame(lambda x, bg: swap(x, None, bg), b, a)
            self.row_labels = ["a", "b", "character a on background b", "character b on background a"]
        return _interleave(a, b, ab, ba)


class AnalogyGrid(ImageGridCallback):
    """Animation transfer laid out as paper 000 Fig. 2 / 4 / 5: three ground-truth rows, then
    background swap, animation transfer and both: ``6 * num_examples`` rows x ``t``."""

    default_name = "analogy_grid"
    clips_per_example = 3
    VARIANTS = {"a scene model": ("swap_background", "transfer_animation", "swap_background_and_animation")}

    def check_model(self, pl_module: pl.LightningModule) -> None:
        self._require(pl_module, self.VARIANTS)

    def build(self, pl_module: pl.LightningModule, examples: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self._require(pl_module, self.VARIANTS)
        n = self.num_examples
        frames = examples["frames"]
        x1, x2, x3 = frames[:n], frames[n : 2 * n], frames[2 * n :]
        t = frames.shape[1]
        c0, a0 = _hold(x1[:, 0], t), _hold(x3[:, 0], t)
        on_background = _per_frame(lambda x, bg: m["swap_background"](x, None, bg), x1, x2)
        animated = _per_frame(lambda xc, xt1, xt2: m["transfer_animation"](xc, xt1, xt2), c0, a0, x3)
        both = _per_frame(m["swap_background_and_animation"], c0, a0, x3, x2)
        self.row_labels = ["x1 (character)", "x2 (background)", "x3 (animation)", "x1 on background x2",
                           "x1 animated as x3", "x1 animated as x3 on background x2"]
        return _interleave(x1, x2, x3, on_background, animated, both)


class GenerationGrid(ImageGridCallback):
    """Image -> sequence for every action (paper 004 Fig. 4): ``num_examples * actions`` rows x
    ``length`` columns.

    Args:
        length: generated frames (default: twice the clip length, e.g. 16 from 8-frame training).
        **kwargs: see ``ImageGridCallback``.
    """

    default_name = "generation_grid"
    VARIANTS = {"a motion model": ("generate",)}

    def __init__(self, length: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if length is not None and length < 1:
            raise ValueError(f"GenerationGrid: length must be >= 1 or null, got {length}.")
        self.length = length
        self.actions: tuple[str, ...] = ()

    def check_model(self, pl_module: pl.LightningModule) -> None:
        self._require(pl_module, self.VARIANTS)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        actions = getattr(trainer.datamodule, "actions", None)
        if not actions:
            raise ValueError("GenerationGrid needs an action-labelled dataset (the DataModule reports no actions).")
        self.actions = tuple(actions)

    def build(self, pl_module: pl.LightningModule, examples: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self._require(pl_module, self.VARIANTS)
        frames0 = examples["frames"][:, 0]
        length = self.length or 2 * examples["frames"].shape[1]
        n = frames0.shape[0]
        rows = [m["generate"](frames0, torch.full((n,), k, dtype=torch.long, device=frames0.device), length)
                for k in range(len(self.actions))]
        self.row_labels = list(self.actions)
        return _interleave(*rows)
