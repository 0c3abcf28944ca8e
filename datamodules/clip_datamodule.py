"""Shared LightningDataModule logic: sources, splits, epoch-keyed sampling, DDP batch checks.

Randomness in training (which clip, which frames, and for procedural sources the clip itself)
is a pure function of ``(seed, key)`` where the sampler hands out keys ``epoch * n + i``.
So every epoch sees fresh samples, a run is reproducible from its config, and the result
does not depend on the number of workers or DDP processes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.base import SPLITS, ClipDataset, ClipSource

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def key_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator determined by ``(seed, *key)`` alone (worker- and rank-independent)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *[int(k) for k in key]])


class EpochKeySampler(Sampler[int]):
    """Yields keys ``epoch * n + i`` over a seeded permutation of ``range(n)`` (new each epoch).

    Lightning calls ``set_epoch`` every epoch (also through its DDP sampler wrapper, which then
    shards these keys across ranks). After a mid-epoch resume, the first pass over
    ``resume_epoch`` skips the ``resume_skip`` keys already trained on, so a resumed run sees
    exactly the samples an uninterrupted run would.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, resume_epoch: int = -1, resume_skip: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.resume_epoch, self.resume_skip = resume_epoch, resume_skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = key_rng(self.seed, 1, self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        keys = (self.epoch * self.n + order).tolist()
        if self.epoch == self.resume_epoch and self.resume_skip:
            keys, self.resume_skip = keys[self.resume_skip :], 0
        return iter(keys)


class KeyedView(Dataset):
    """Base of the DataModules' item views: maps a key to a clip index and a per-key RNG.

    ``indices`` restricts the view to some clips of the split (all clips when ``None``).
    """

    def __init__(self, clips: ClipDataset, split: str, seed: int, indices: list[int] | None = None) -> None:
        self.clips, self.split, self.seed, self.indices = clips, split, seed, indices
        self.split_id = SPLITS.index(split)

    def __len__(self) -> int:
        return len(self.clips) if self.indices is None else len(self.indices)

    def locate(self, key: int) -> tuple[int, np.random.Generator]:
        """Clip index (the key itself for procedural clips) and the RNG for this key."""
        if self.clips.procedural:
            index = key
        elif self.indices is None:
            index = key % len(self.clips)
        else:
            index = self.indices[key % len(self.indices)]
        return index, key_rng(self.seed, 2, self.split_id, key)


class ClipDataModule(pl.LightningDataModule):
    """Common base of ``PairFramesDataModule`` and ``ActionSequenceDataModule``.

    Args:
        source: the dataset (``datamodules.MovingMNIST``, ``DSVAESprites``, ``ReedSprites``,
            ``SpritesOnBackgrounds`` or ``VideoFolder``), chosen by ``class_path`` in YAML.
        batch_size: global batch size; it must divide by the number of DDP processes.
        eval_batch_size: global batch size for val/test (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        assets_root: raw assets folder (else ``$SCENEMOTION_ASSETS``, else ``../shared/data``).
        cache_dir: derived-dataset cache (else ``$SCENEMOTION_CACHE``, else ``~/.cache/scenemotion``).
        seed: seed of sampling (pairs, windows, procedural clips).
        pin_memory: pin host memory (GPU training).
        predict_split: the split ``cli.py predict`` reads (``train``, ``val`` or ``test``).
    """

    def __init__(
        self,
        source: ClipSource,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        assets_root: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        predict_split: str = "test",
    ) -> None:
        super().__init__()
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split must be one of {SPLITS}, got {predict_split!r}.")
        self.predict_split = predict_split
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.assets_root = assets_root
        self.cache_dir = cache_dir
        self.seed = seed
        self.pin_memory = pin_memory
        self.datasets: dict[str, ClipDataset] = {}
        self.items: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ to override
    def make_view(self, clips: ClipDataset, split: str) -> Dataset:
        """Wrap a split's clips into the items this DataModule serves."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        self.source.prepare(self.assets_root, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        for name, size in (("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)):
            if size % world:
                raise ValueError(
                    f"data.{name}={size} does not divide across {world} DDP processes. "
                    f"Set --data.init_args.{name} to a multiple of {world} (it is the global batch)."
                )
        splits = STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS
        for split in splits:
            if split not in self.datasets:
                clips = self.source.dataset(split, self.assets_root, self.cache_dir)
                self.datasets[split] = clips
                self.items[split] = self.make_view(clips, split)

    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.items:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        view = self.items[split]
        per_rank = (self.batch_size if train else self.eval_batch_size) // self._world()
        return DataLoader(
            view,
            batch_size=per_rank,
            sampler=EpochKeySampler(len(view), self.seed, True, *self._resume_point()) if train else None,
            shuffle=False,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        split = self.predict_split
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(self.predict_view(self.datasets[split], split), batch_size=self.eval_batch_size // self._world(),
                          shuffle=False, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def predict_view(self, clips: ClipDataset, split: str) -> Dataset:
        """The items ``predict`` reads (default: the split's val/test items)."""
        return self.items[split]

    def _resume_point(self) -> tuple[int, int]:
        """``(epoch, global samples already seen in it)`` when resuming mid-epoch, else ``(-1, 0)``.

        Lightning restores the loop progress before it asks for the train loader; it would
        otherwise restart the interrupted epoch's data from its first batch. Whole global
        batches are skipped, so each DDP rank's shard matches the uninterrupted run.
        """
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting:
            return -1, 0
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.processed == 0:
            return -1, 0
        return trainer.current_epoch, progress.current.processed * self.batch_size

    # ------------------------------------------------------------------ dataset facts
    def _any_dataset(self) -> ClipDataset:
        if not self.datasets:
            self.prepare_data()
            self.setup("test")
        return next(iter(self.datasets.values()))

    @property
    def actions(self) -> tuple[str, ...]:
        return self._any_dataset().actions

    @property
    def views(self) -> tuple[str, ...]:
        return self._any_dataset().views

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return self._any_dataset().attribute_names

    @property
    def attribute_cardinalities(self) -> tuple[int, ...]:
        return self._any_dataset().attribute_cardinalities

    @property
    def image_size(self) -> int:
        return self._any_dataset().image_size

