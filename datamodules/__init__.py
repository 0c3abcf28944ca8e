"""Assets, dataset generators and LightningDataModules (see ``base.py`` for the contracts).

Public names are imported lazily, so ``import datamodules.assets`` stays cheap and a YAML
``class_path: datamodules.MovingMNIST`` resolves to the class in its module.
"""

from importlib import import_module

_EXPORTS = {
    "ClipSource": "base",
    "ClipDataset": "base",
    "PairFramesDataModule": "pair_frames",
    "ActionSequenceDataModule": "action_sequence",
    "MovingMNIST": "moving_mnist",
    "DSVAESprites": "dsvae_sprites",
    "ReedSprites": "reed_sprites",
    "SpritesOnBackgrounds": "sprites_on_backgrounds",
    "VideoFolder": "video_folder",
    "FrameFiles": "frame_files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
