"""What ``cli.py predict`` produces for each model (issue 15: compose new scenes).

Each LightningModule's ``predict_step`` delegates here. A prediction is a plain dict
(tensors on the CPU, frames in [0, 1]):

``index``    ``(b,)`` int64: the items' indices in the predicted split (file names).
``inputs``   ``{name: (b, t, 3, h, w)}``: the clips a result was made from.
``outputs``  ``{name: (b, t, 3, h, w)}``: the results (one GIF / MP4 per item and name).
``panels``   ``{panel: [names]}``: rows of one PNG grid per batch (inputs and results side by side).
``tables``   ``{name: list of per-item dicts}``: numbers (the judge's class probabilities).

``callbacks.PredictionWriter`` writes them under ``<default_root_dir>/predictions/``.

What to produce is ``model.init_args.predict`` in YAML (``PredictOptions``; every key optional)::

    model:
      init_args:
        predict: {tasks: [generate, swap], length: 24, actions: [walk]}

Tasks, per model:

* Hamiltonian (paper 004): ``generate`` (image -> sequence: ``length`` frames of every action from
  each clip's first frame), ``swap`` (motion swap with the next clip of the batch: content of one,
  motion of the other, both ways; needs action labels), ``sample`` (unconditional: prior content
  and prior motion of every action, seeded by ``seed`` and the batch's first index).
* Equivariant (paper 000), on whole clips (``PairFramesDataModule`` serves clips to ``predict``):
  ``swap_background`` (every frame of clip ``i`` on the background of clip ``i+1``),
  ``transfer_animation`` (clip ``i``'s first frame animated like clip ``i+2``),
  ``swap_background_and_animation`` (both: character ``i``, background ``i+1``, animation ``i+2``),
  ``remove_background`` (clip ``i`` on a plain ``canvas_color`` canvas).
* Judge: ``probabilities`` (softmax of the action-view head and of every attribute head).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor

from utils.torch_utils import eval_mode

TASKS: dict[str, tuple[str, ...]] = {
    "hamiltonian": ("generate", "swap", "sample"),
    "equivariant": ("swap_background", "transfer_animation", "swap_background_and_animation", "remove_background"),
    "judge": ("probabilities",),
}


@dataclass
class PredictOptions:
    """``model.init_args.predict``: what ``predict`` produces (module docstring).

    Args:
        tasks: tasks to run (default: every task of the model).
        length: frames of image -> sequence generation and of unconditional samples (Hamiltonian).
        actions: actions to generate / sample, by index or name (default: all).
        seed: seed of the unconditional samples.
        canvas_color: RGB in [0, 1] of background removal (default: the model's ``canvas_color``).
    """

    tasks: list[str] | None = None
    length: int = 16
    actions: list[int | str] | None = None
    seed: int = 0
    canvas_color: list[float] | None = None
    kind: str = field(default="hamiltonian", repr=False)

    @classmethod
    def parse(cls, options: Mapping[str, Any] | "PredictOptions" | None, kind: str) -> "PredictOptions":
        """Checked options of a model ``kind`` (``hamiltonian``, ``equivariant`` or ``judge``)."""
        if isinstance(options, PredictOptions):
            options = {f.name: getattr(options, f.name) for f in fields(options) if f.name != "kind"}
        options = dict(options or {})
        known = [f.name for f in fields(cls) if f.name != "kind"]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"Unknown predict option(s) {unknown}; model.init_args.predict takes {known}.")
        out = cls(**options, kind=kind)
        allowed = TASKS[kind]
        out.tasks = list(allowed if out.tasks is None else out.tasks)
        bad = [t for t in out.tasks if t not in allowed]
        if bad or not out.tasks:
            raise ValueError(f"predict tasks {bad or out.tasks} are not tasks of this model; choose from {list(allowed)}.")
        if isinstance(out.length, bool) or not isinstance(out.length, int) or out.length < 1:
            raise ValueError(f"predict length must be a positive integer, got {out.length!r}.")
        if out.canvas_color is not None and (len(out.canvas_color) != 3 or not all(0 <= float(c) <= 1 for c in out.canvas_color)):
            raise ValueError(f"predict canvas_color must be 3 RGB values in [0, 1], got {out.canvas_color!r}.")
        return out


def action_names(datamodule: Any, num_actions: int) -> list[str]:
    """The data's action names when it has ``num_actions`` of them, else ``action0``, ``action1``, ..."""
    names = list(getattr(datamodule, "actions", None) or ()) if datamodule is not None else []
    return names if len(names) == num_actions else [f"action{k}" for k in range(num_actions)]


def resolve_actions(wanted: Sequence[int | str] | None, names: Sequence[str]) -> list[int]:
    """Action indices from indices or names (default: all); a clear error for an unknown one."""
    if wanted is None:
        return list(range(len(names)))
    out = []
    for a in wanted:
        if isinstance(a, str) and a in names:
            out.append(list(names).index(a))
        elif isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(names):
            out.append(a)
        elif isinstance(a, str) and a.isdigit() and int(a) < len(names):
            out.append(int(a))
        else:
            raise ValueError(f"Unknown action {a!r}: this model has actions {list(names)} (or indices 0..{len(names) - 1}).")
    return out


def batch_clips(batch: Mapping[str, Tensor]) -> Tensor:
    """``b t 3 h w`` clips of a batch: ``frames``, or the pair ``x1, x2`` as 2-frame clips."""
    if "frames" in batch:
        return batch["frames"]
    if "x1" in batch and "x2" in batch:
        return torch.stack([batch["x1"], batch["x2"]], 1)
    raise ValueError(f"predict needs clips (batch key 'frames') or frame pairs ('x1', 'x2'), got keys {sorted(batch)}.")


def batch_index(batch: Mapping[str, Tensor], batch_idx: int, b: int) -> Tensor:
    if "index" in batch:
        return batch["index"].detach().cpu().long()
    return torch.arange(batch_idx * b, batch_idx * b + b)


def _cpu(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().float().clamp(0, 1).cpu() for k, v in d.items()}


def partner(x: Tensor, shift: int) -> Tensor:
    """The batch rolled by ``shift``: item ``i`` is paired with item ``i + shift`` (mod ``b``)."""
    return torch.roll(x, -shift, dims=0)


# ---------------------------------------------------------------------------------------- models
def hamiltonian_predict(module: Any, batch: Mapping[str, Tensor], batch_idx: int, options: PredictOptions,
                        names: Sequence[str]) -> dict[str, Any]:
    """Image -> sequence for each action, motion swap with the next clip, unconditional samples."""
    clips = batch_clips(batch)
    b = clips.shape[0]
    index = batch_index(batch, batch_idx, b)
    actions = resolve_actions(options.actions, names)
    inputs, outputs, panels = {"input": clips}, {}, {}
    if "generate" in options.tasks:
        for k in actions:
            outputs[f"generate_{names[k]}"] = module.generate(clips[:, 0], k, options.length)
        panels["generate"] = ["input"] + [f"generate_{names[k]}" for k in actions]
    if "swap" in options.tasks and "action" in batch:
        action = batch["action"]
        inputs["motion_source"] = partner(clips, 1)
        ab, ba = module.swap_motion(clips, inputs["motion_source"], action, partner(action, 1))
        outputs["swap_content_with_partner_motion"], outputs["swap_partner_with_own_motion"] = ab, ba
        panels["swap"] = ["input", "motion_source", "swap_content_with_partner_motion", "swap_partner_with_own_motion"]
    if "sample" in options.tasks:
        for k in actions:
            seed = options.seed * 1_000_003 + int(index[0]) * len(names) + k
            outputs[f"sample_{names[k]}"] = module.sample(b, k, options.length, seed=seed)
        panels["sample"] = [f"sample_{names[k]}" for k in actions]
    return {"index": index, "inputs": _cpu(inputs), "outputs": _cpu(outputs), "panels": panels, "tables": {}}


def scene_predict(scene: Any, batch: Mapping[str, Tensor], batch_idx: int, options: PredictOptions,
                  canvas_color: Sequence[float]) -> dict[str, Any]:
    """Background swap, animation transfer, both, and background removal on whole clips.

    Clip ``i`` gets the background of clip ``i+1`` and the animation of clip ``i+2`` of the batch.
    """
    clips = batch_clips(batch)
    b, t = clips.shape[:2]
    index = batch_index(batch, batch_idx, b)
    flat = lambda x: rearrange(x, "b t c h w -> (b t) c h w")  # noqa: E731
    unflat = lambda x: rearrange(x, "(b t) c h w -> b t c h w", b=b)  # noqa: E731
    background, animation = partner(clips, 1), partner(clips, 2)
    inputs, outputs, panels = {"input": clips}, {}, {}
    if "swap_background" in options.tasks:
        inputs["background_source"] = background
        bg = repeat(background[:, 0], "b c h w -> (b t) c h w", t=t)
        outputs["swap_background"] = unflat(scene.swap_background(flat(clips), None, bg))
        panels["swap_background"] = ["input", "background_source", "swap_background"]
    if "transfer_animation" in options.tasks:
        inputs["animation_source"] = animation
        outputs["transfer_animation"] = scene.animate(clips[:, 0], animation[:, 0], animation)
        panels["transfer_animation"] = ["input", "animation_source", "transfer_animation"]
    if "swap_background_and_animation" in options.tasks:
        inputs["background_source"], inputs["animation_source"] = background, animation
        outputs["swap_background_and_animation"] = scene.animate(clips[:, 0], animation[:, 0], animation, background[:, 0])
        panels["swap_background_and_animation"] = ["input", "background_source", "animation_source", "swap_background_and_animation"]
    if "remove_background" in options.tasks:
        color = options.canvas_color or canvas_color
        outputs["remove_background"] = unflat(scene.remove_background(flat(clips), canvas_color=tuple(color)))
        panels["remove_background"] = ["input", "remove_background"]
    return {"index": index, "inputs": _cpu(inputs), "outputs": _cpu(outputs), "panels": panels, "tables": {}}


def class_names(datamodule: Any, num_classes: int) -> list[str]:
    """Names of the judge's classes: ``action/view`` where the data has them, else ``class<k>``."""
    actions = list(getattr(datamodule, "actions", None) or ()) if datamodule is not None else []
    views = list(getattr(datamodule, "views", None) or ()) if datamodule is not None else []
    if actions and views and len(actions) * len(views) == num_classes:
        return [f"{a}/{v}" for a in actions for v in views]
    if len(actions) == num_classes:
        return actions
    return [f"class{k}" for k in range(num_classes)]


def judge_predict(module: Any, batch: Mapping[str, Tensor], batch_idx: int, classes: Sequence[str],
                  attribute_names: Sequence[str]) -> dict[str, Any]:
    """Class probabilities of every head, one row per clip."""
    clips = batch_clips(batch)
    index = batch_index(batch, batch_idx, clips.shape[0])
    with eval_mode(module):
        probs = module.probabilities(clips)
    label = probs["label"].float().cpu()
    attrs = [p.float().cpu() for p in probs.get("attributes", [])]
    rows = []
    for i in range(label.shape[0]):
        row = {"index": int(index[i]), "predicted": classes[int(label[i].argmax())],
               "probabilities": {c: round(float(p), 6) for c, p in zip(classes, label[i])}}
        for name, p in zip(attribute_names, attrs):
            row[f"attribute_{name}"] = int(p[i].argmax())
            row[f"attribute_{name}_probabilities"] = [round(float(v), 6) for v in p[i]]
        rows.append(row)
    return {"index": index, "inputs": {}, "outputs": {}, "panels": {}, "tables": {"probabilities": rows}}
