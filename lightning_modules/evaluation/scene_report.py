"""The test stage of ``EquivariantSceneModule``: the paper-000 protocols that fit the data source,
written as tables, JSON, NPZ and grids (``run_evaluation``).

Moving MNIST (``datamodules.MovingMNIST``) -> Fig. 3 (+ a short §4.6 ``T_Z`` analysis with one
digit); sprites with action labels -> analogies (Fig. 6-9, 16, 21); any source -> a grid of the
manipulations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info

from datamodules.moving_mnist import MovingMNIST, find_digit
from lightning_modules.evaluation import scene as ev
from lightning_modules.evaluation import tz
from lightning_modules.evaluation.published import PAPER_TZ_R2
from utils.io import save_image_atomic, write_npz
from utils.report import format_table, write_results


def run_evaluation(module, datamodule, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run the protocols that fit ``datamodule.source`` and write tables, JSON, NPZ and grids into ``out_dir``.

    Moving MNIST -> Fig. 3 (+ a short §4.6 analysis with one digit); sprites -> analogies.
    Returns ``{"files": [...], "scalars": {...}}`` (scalars are logged as ``test/...``).
    """
    hp = module.hparams
    scene = module.scene
    device = module.device
    source = datamodule.source
    out_dir = Path(out_dir)
    files, scalars = [], {}
    kind = type(source).__name__
    if isinstance(source, MovingMNIST):
        result = ev.fig3_protocol(scene, source, count=hp.fig3_examples, chunk=hp.fig3_chunk, seed=hp.eval_seed, device=device,
                                  use_ground_truth_transform=hp.use_ground_truth_transform,
                                  assets_root=getattr(datamodule, "assets_root", None), progress=progress, canvas_color=hp.canvas_color)
        title, rows = ev.fig3_table(result)
        table = format_table(title, rows, list(next(iter(rows.values())))) + "\n" + ev.ghost_table(result["summary"]["ghosts"])
        summary = {"protocol": "fig3", "source": kind, "use_ground_truth_transform": hp.use_ground_truth_transform, **result["summary"]}
        files.append(write_results(out_dir, "fig3", summary, table))
        files.append(write_npz(out_dir / "fig3_per_example.npz", result["per_example"]))
        files.append(save_image_atomic(ev.fig3_grid(result["examples"]), out_dir / "fig3_examples.png"))
        for row in ("transformation", "background", "video_frames", "no_object"):
            scalars[f"fig3_{row}_mse"] = result["summary"][row]["mse"]["mean"]
        for name in ("background_ghost_ratio", "character_ghost_ratio"):
            scalars[name] = result["summary"]["ghosts"][name]
        if hp.tz_pairs > 0 and source.num_digits == 1 and not hp.use_ground_truth_transform:
            digit = find_digit(hp.tz_digit, "test", assets_root=getattr(datamodule, "assets_root", None))
            tz_result = tz.tz_analysis(scene, source, digit, 0, pairs=hp.tz_pairs, seed=hp.eval_seed, device=device,
                                assets_root=getattr(datamodule, "assets_root", None), progress=progress)
            res = tz_result["results"]
            table = tz.tz_table(res, paper=PAPER_TZ_R2.get(hp.tz_digit))
            files.append(write_results(out_dir, "tz_analysis", res, table))
            scalars["tz_r2"] = res["r2_tx_to_tz"]
            scalars["tz_r2_angle"] = res["r2_angle"]
        batch = source.fig3_examples(8, seed=hp.eval_seed + 1)
        x1, x2 = batch["x1_i"].to(device), batch["x1_j"].to(device)
    else:
        dataset = datamodule.datasets.get("test") if hasattr(datamodule, "datasets") else None
        if dataset is None:
            datamodule.setup("test")
            dataset = datamodule.datasets["test"]
        if not getattr(dataset, "actions", ()):
            rank_zero_info(f"EquivariantSceneModule: {kind} has no action labels; reporting the test-pair metrics and the manipulation grid.")
        else:
            sprite_files, sprite_scalars = _sprite_evaluation(module, dataset, kind, out_dir, progress)
            files += sprite_files
            scalars.update(sprite_scalars)
        items = [dataset.get(k, [0, dataset.clip_length(k) // 2]) for k in range(0, len(dataset), max(1, len(dataset) // 8))[:8]]
        x1 = torch.stack([it["frames"][0] for it in items]).to(device)
        x2 = torch.stack([it["frames"][1] for it in items]).to(device)
    files.append(save_image_atomic(ev.manipulation_grid(scene, x1, x2, hp.canvas_color), out_dir / "manipulations.png"))
    rank_zero_info("EquivariantSceneModule: wrote " + ", ".join(str(f) for f in files if f is not None))
    return {"files": [str(f) for f in files if f is not None], "scalars": scalars}


def _sprite_evaluation(module, dataset, kind: str, out_dir: Path, progress: bool) -> tuple[list, dict]:
    """Sprite analogies (Fig. 6-9, 16, 21): JSON table, per-example NPZ and an analogy grid."""
    hp, scene, device = module.hparams, module.scene, module.device
    files, scalars = [], {}
    result = ev.sprite_analogy_protocol(scene, dataset, seed=hp.eval_seed, max_clips=hp.analogy_clips, device=device,
                                        canvas_color=hp.canvas_color, progress=progress)
    title, rows = ev.sprite_table(result)
    table = format_table(title, rows, list(next(iter(rows.values()))))
    if "ghosts" in result["summary"]:
        table += "\n" + ev.ghost_table(result["summary"]["ghosts"])
    summary = {"protocol": "sprite_analogy", "source": kind, "pairs": result["pairs"], "actions": result["actions"], **result["summary"]}
    files.append(write_results(out_dir, "sprite_analogy", summary, table))
    files.append(write_npz(out_dir / "sprite_analogy_per_example.npz", result["per_example"]))
    ex = result["examples"]
    files.append(save_image_atomic(ev.labeled_grid([("A (animation)", ex["A"]), ("B (ground truth)", ex["B"]),
                                                       ("B animated like A", ex["prediction"])]), out_dir / "sprite_analogy.png"))
    for row, per_action in result["summary"].items():
        if row == "ghosts":
            scalars.update({name: per_action[name] for name in ("background_ghost_ratio", "character_ghost_ratio")})
        else:
            scalars[f"analogy_{row}_mse"] = per_action["all"]["mse"]["mean"]
    return files, scalars
