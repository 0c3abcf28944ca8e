"""The studio's engine (``python studio.py``; issue 15): load a checkpoint, compose, export.

``load_composer(path)`` returns a ``SceneComposer`` (``EquivariantSceneModule`` checkpoints) or a
``MotionComposer`` (``HamiltonianMotionModule``), and refuses anything else with one clear
``StudioError``. Everything runs in eval mode under ``torch.inference_mode``. The encodings of
the chosen inputs are cached (``fc`` of the character, ``fb`` of the background, ``T_Z`` of the
animation), so a change of one choice re-encodes only that input; the frames of a result are
then rendered in one batch. Inputs are ``t 3 h w`` float clips in [0, 1] (an image is a
one-frame clip); ``read_upload`` reads a file the way ``datamodules.FrameFiles`` does.

Example inputs come from the assets: the test split of the dataset the checkpoint was trained
on (its run's ``config.yaml`` next to the checkpoint), else Moving MNIST (scene model) or DSVAE
Sprites (motion model).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from einops import rearrange, repeat
from torch import Tensor

from backbone.scene import apply_affine
from utils.checkpoints import MODEL_TAG_KEY

MODELS = {
    "EquivariantSceneModule": "lightning_modules.equivariant_module",
    "HamiltonianMotionModule": "lightning_modules.hamiltonian_module",
}
DEFAULT_EXAMPLES = {"EquivariantSceneModule": "datamodules.MovingMNIST", "HamiltonianMotionModule": "datamodules.DSVAESprites"}


class StudioError(ValueError):
    """A checkpoint or input the studio cannot use; the message says what to do."""


def checkpoint_model(path: str | Path) -> str:
    """The model class name a checkpoint was saved by (clear ``StudioError`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"No checkpoint at {path}. Pass --ckpt runs/<config>/checkpoints/last.ckpt of a scene or motion model.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # not a torch file at all
        raise StudioError(f"{path} is not a PyTorch Lightning checkpoint ({type(exc).__name__}: {exc}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise StudioError(f"{path} is not a PyTorch Lightning checkpoint (no state_dict).")
    name = ckpt.get(MODEL_TAG_KEY) or str(ckpt.get("hyper_parameters", {}).get("_class_path", "")).rpartition(".")[2] or "an unknown model"
    if name not in MODELS:
        what = "the judge classifier" if name == "SequenceJudgeModule" else name
        raise StudioError(
            f"{path} is a checkpoint of {what}. The studio composes with the scene model (EquivariantSceneModule, "
            f"configs/*_equivariant*.yaml) or the motion model (HamiltonianMotionModule, configs/sprites_hamiltonian*.yaml)."
        )
    return name


def run_config(path: str | Path) -> dict | None:
    """The ``config.yaml`` LightningCLI saved for the checkpoint's run, if one is found."""
    path = Path(path).resolve()
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    candidates = [run / "config.yaml"] + sorted(run.glob("lightning_logs/version_*/config.yaml"), reverse=True)
    for c in candidates:
        if c.is_file():
            try:
                return yaml.safe_load(c.read_text())
            except yaml.YAMLError:
                continue
    return None


def _instantiate(class_path: str, init_args: dict | None) -> Any:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(init_args or {})
    for key, value in list(args.items()):  # nested sources (SpritesOnBackgrounds.sprites)
        if isinstance(value, dict) and "class_path" in value:
            args[key] = _instantiate(value["class_path"], value.get("init_args"))
    return cls(**args)


def example_clips(model: str, config: dict | None, count: int = 6, split: str = "test") -> tuple[list[tuple[str, Tensor, int | None]], list[str]]:
    """``count`` example clips ``(name, t 3 h w, action)`` from the assets (module docstring), and the data's action names."""
    data = ((config or {}).get("data") or {}).get("init_args") or {}
    source_cfg = data.get("source") if isinstance(data.get("source"), dict) else None
    try:
        if source_cfg is None:
            raise KeyError
        source = _instantiate(source_cfg["class_path"], source_cfg.get("init_args"))
    except Exception:
        source = _instantiate(DEFAULT_EXAMPLES[model], {})
        data = {}
    assets, cache = data.get("assets_root"), data.get("cache_dir")
    source.prepare(assets, cache)
    ds = source.dataset(split, assets, cache)
    picks = np.unique(np.linspace(0, len(ds) - 1, count).round().astype(int)) if len(ds) > 1 else np.array([0])
    actions = list(getattr(ds, "actions", ()) or ())
    out = []
    for i in picks.tolist():
        item = ds.get(i)
        action = int(item["action"]) if "action" in item else None
        label = f"{split} clip {i}" + (f" ({actions[action]})" if action is not None and action < len(actions) else "")
        out.append((label, item["frames"], action))
    return out, actions


def read_upload(path: str | Path, image_size: int, still_frames: int = 1) -> Tensor:
    """An uploaded image (a ``still_frames``-frame clip), GIF, video or frame folder -> ``t 3 h w`` in [0, 1]."""
    from datamodules.base import to_float_frames
    from datamodules.frame_files import read_input
    from datamodules.video_folder import VideoFolderError

    try:
        return to_float_frames(read_input(path, image_size, still_frames))
    except VideoFolderError as exc:
        raise StudioError(str(exc)) from None


def _key(x: Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest() + str(tuple(x.shape))


class _Cache:
    """A few recent encodings by content hash (inputs change one at a time in the studio)."""

    def __init__(self, size: int = 16) -> None:
        self.size, self.items = size, {}

    def get(self, name: str, x: Tensor, fn) -> Any:
        key = (name, _key(x))
        if key not in self.items:
            if len(self.items) >= self.size:
                self.items.pop(next(iter(self.items)))
            self.items[key] = fn(x)
        return self.items[key]


class _Composer:
    """What both composers share: the input check against the model's ``image_size``."""

    image_size: int

    def _check(self, clip: Tensor, name: str) -> Tensor:
        """``clip`` as ``t 3 h w`` (a single ``3 h w`` frame gets a time axis), else ``StudioError``."""
        if clip.dim() == 3:
            clip = clip[None]
        if clip.dim() != 4 or clip.shape[1:] != (3, self.image_size, self.image_size):
            raise StudioError(f"The {name} must be {self.image_size}x{self.image_size} RGB frames, got shape {tuple(clip.shape)}.")
        return clip


class SceneComposer(_Composer):
    """Character / background / animation composition with an ``EquivariantScene`` (paper 000)."""

    kind = "scene"

    def __init__(self, module: Any, examples: list | None = None) -> None:
        self.module = module.eval()
        self.scene = module.scene.eval()
        self.image_size = self.scene.image_size
        self.canvas_color = tuple(module.hparams.canvas_color)
        self.channels_last = bool(module.hparams.get("channels_last", False))
        self.examples = examples or []
        self.cache = _Cache()

    def _fmt(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    @torch.inference_mode()
    def compose(self, character: Tensor, background: Tensor | None = None, animation: Tensor | None = None,
                remove_background: bool = False) -> Tensor:
        """The composed clip ``t 3 h w``: the character (of ``character``'s first frame when an
        animation is given, else of each of its frames) moved like ``animation`` (frame ``k``:
        ``T_Z(fc(a_0), fc(a_k))``), on the background of ``background``'s first frame (default: the
        character's own), or on a plain canvas with ``remove_background``."""
        character = self._check(character, "character")
        s = self.scene
        if remove_background:
            bg = s.canvas(character[:1], self.canvas_color)
        else:
            bg = self._check(background, "background")[:1] if background is not None else character[:1]
        z_b = self.cache.get("fb", bg, lambda x: s.fb(self._fmt(x)))
        if animation is not None:
            animation = self._check(animation, "animation source")
            z_c = self.cache.get("fc", character[:1], lambda x: s.fc(self._fmt(x)))
            theta = self.cache.get("tz", animation, self._animation_transforms)
            n = theta.shape[0]
            z = apply_affine(repeat(z_c, "1 c h w -> n c h w", n=n), theta)
        else:  # each character frame where it is, on the chosen background
            z = self.cache.get("fc", character, lambda x: s.fc(self._fmt(x)))
            n = z.shape[0]
        return s.g(z + z_b.expand(n, -1, -1, -1)).clamp(0, 1).float().contiguous()

    def _animation_transforms(self, animation: Tensor) -> Tensor:
        z = self.scene.fc(self._fmt(animation))
        return self.scene.transform(z[:1].expand_as(z), z)


class MotionComposer(_Composer):
    """Image -> sequence for any action and length, and motion swap, with a ``MotionVAE`` (paper 004)."""

    kind = "motion"

    def __init__(self, module: Any, examples: list | None = None, action_names: Sequence[str] | None = None) -> None:
        self.module = module.eval()
        self.model = module.model.eval()
        self.image_size = self.model.image_size
        self.num_actions = self.model.num_actions
        names = list(action_names or [])
        self.action_names = names if len(names) == self.num_actions else [f"action {k}" for k in range(self.num_actions)]
        self.still_frames = int(getattr(module, "content_still_frames", 8))
        self.examples = examples or []
        self.cache = _Cache()

    def action(self, name: str | int) -> int:
        if isinstance(name, int) and 0 <= name < self.num_actions:
            return name
        if name in self.action_names:
            return self.action_names.index(name)
        raise StudioError(f"Unknown action {name!r}; this model has {self.action_names}.")

    @torch.inference_mode()
    def generate(self, image: Tensor, action: str | int, length: int = 16) -> Tensor:
        """``length`` frames ``t 3 h w`` of ``action`` from one image (the first frame of ``image``)."""
        frame = self._check(image, "image")[:1]
        k = self.action(action)
        if length < 1:
            raise StudioError(f"The length must be at least 1 frame, got {length}.")
        model = self.model
        post = self.cache.get(f"post{k}", frame, lambda x: self._posterior(x, k))
        states = model.rollout(post[1], torch.tensor([k]), torch.arange(length))
        return model.decode_states(post[0], states, torch.tensor([k]))[0].clamp(0, 1).float()

    def _posterior(self, frame: Tensor, k: int) -> tuple[Tensor, Tensor]:
        still = torch.zeros(1, self.still_frames, dtype=torch.long) if self.still_frames > 1 else None
        post = self.model.posterior(frame[:, None].contiguous(), torch.tensor([k]), content_index=still)
        return post.z.mu, post.state(torch.zeros(1, dtype=torch.long))

    @torch.inference_mode()
    def swap(self, clip_a: Tensor, clip_b: Tensor, action_a: str | int, action_b: str | int) -> tuple[Tensor, Tensor]:
        """``(ab, ba)``: content of ``clip_a`` with the motion of ``clip_b``, and the other way round."""
        a, b = self._check(clip_a, "first clip"), self._check(clip_b, "second clip")
        ab, ba = self.model.swap_motion(a[None], b[None], self.action(action_a), self.action(action_b))
        return ab[0].float(), ba[0].float()


def load_composer(path: str | Path, with_examples: bool = True, num_examples: int = 6) -> SceneComposer | MotionComposer:
    """The composer of a scene or motion checkpoint (``StudioError`` for anything else)."""
    name = checkpoint_model(path)
    cls = getattr(importlib.import_module(MODELS[name]), name)
    module = cls.load_from_checkpoint(str(path), map_location="cpu")
    examples, action_names = example_clips(name, run_config(path), num_examples) if with_examples else ([], [])
    if name == "EquivariantSceneModule":
        return SceneComposer(module, examples)
    return MotionComposer(module, examples, action_names)


def to_uint8(clip: Tensor) -> np.ndarray:
    """``t 3 h w`` float -> ``t h w 3`` uint8."""
    return rearrange((clip.clamp(0, 1) * 255).round().to(torch.uint8), "t c h w -> t h w c").cpu().numpy()
