"""W&B sweep files (engine schema, real init-arg names) and the offline sweep runner (``sweep.py``)."""

import glob
import importlib
import json
import math
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

import sweep
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted(glob.glob(str(ROOT / "configs" / "sweeps" / "*.yaml")))
TINY_SCENE = [
    "--trainer.max_steps=4", "--trainer.num_sanity_val_steps=0", "--data.init_args.num_workers=0", "--data.init_args.batch_size=8",
    "--data.init_args.source.init_args.train_clips_per_epoch=16", "--data.init_args.source.init_args.val_clips=8",
    "--data.init_args.source.init_args.test_clips=8", "--model.init_args.channels=[4, 8]", "--model.init_args.tz_channels=[4]",
    "--model.init_args.tz_hidden=8", "--model.init_args.channels_last=false", "--trainer.callbacks=[]",
]


def test_there_is_a_sweep_for_each_model():
    names = {Path(f).stem for f in SWEEP_FILES}
    assert {"equivariant_mnist", "hamiltonian_sprites"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: Path(p).stem)
def test_sweep_file_passes_the_engine_schema_and_names_real_init_args(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(Path(path).read_text())
    assert sweep.schema_violations(config) == []
    filled = sweep.load_sweep(path)
    assert filled["metric"]["goal"] in ("minimize", "maximize") and filled["metric"]["name"].startswith("val/")
    command = config["command"]
    assert config["program"] == "cli.py" and command[:4] == ["${env}", "${interpreter}", "${program}", "fit"]
    base = load_config(ROOT / command[command.index("--config") + 1])
    module_path, cls = base["model"]["class_path"].rsplit(".", 1)
    parser = ArgumentParser()  # what the CLI accepts: jsonargparse also follows **kwargs into the class they are passed to
    parser.add_class_arguments(getattr(importlib.import_module(module_path), cls), "model")
    accepted = set(vars(parser.get_defaults().model))
    for name in config["parameters"]:
        assert name.startswith("model.init_args.") and name.split(".")[-1] in accepted, name
    # the agent's macro expansion: one --name=value flag per parameter
    params = {name: {"value": 1} for name in config["parameters"]}
    built = sweep.build_command(filled, params, "r0", Path("."))
    assert built[:3] == ["/usr/bin/env", sweep.sys.executable, "cli.py"]
    assert built[-len(params):] == [f"--{name}=1" for name in config["parameters"]]


def test_invalid_sweep_files_get_one_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "sideways", "program": "cli.py", "command": ["${program}"],
                                   "parameters": {"model.init_args.lr": {"min": 1.0, "max": 0.1}}}))
    with pytest.raises(sweep.SweepConfigError) as err:
        sweep.load_sweep(bad)
    message = str(err.value)
    assert "bad.yaml is not a valid W&B sweep configuration" in message
    assert "'sideways' is not one of" in message and "${args}" in message
    with pytest.raises(sweep.SweepConfigError, match="does not exist"):
        sweep.load_sweep(tmp_path / "missing.yaml")
    assert sweep.main([str(bad), "--validate-only"]) == 2


def test_offline_runner_completes_a_two_trial_bayes_sweep(tmp_path, monkeypatch, cache_dir, capsys):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / "configs" / "sweeps" / "equivariant_mnist.yaml").read_text())
    command = config["command"]
    config["command"] = command[:-1] + TINY_SCENE + [f"--data.init_args.cache_dir={cache_dir}"] + command[-1:]
    config["parameters"]["model.init_args.feature_channels"] = {"values": [4, 8]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    trials = sweep.run_sweep(path, count=2, out=tmp_path / "out", name="tiny-sweep", timeout=300)
    out = capsys.readouterr().out
    assert [t.state for t in trials] == ["finished", "finished"], out
    assert all(t.metric is not None and math.isfinite(t.metric) for t in trials)
    assert trials[0].params != trials[1].params
    board = json.loads((tmp_path / "out" / "tiny-sweep" / "leaderboard.json").read_text())
    assert board["metric"]["name"] == "val/scene" and len(board["trials"]) == 2
    assert "Sweep leaderboard: val/scene (minimize)" in out
    ranked = [line for line in out.splitlines() if line.startswith(("1. ", "2. "))]
    best = min(trials, key=lambda t: t.metric)
    assert ranked[0].startswith(f"1. {best.name}")
    for t in trials:
        assert len(glob.glob(f"{t.directory}/wandb/offline-run-*-{t.name}")) == 1  # grouped offline W&B run per trial
        logged = json.loads(Path(t.directory, "metrics.json").read_text())
        assert t.metric == min(h["val/scene"] for h in logged["history"])  # best validation, as W&B's bayes reads it
        assert f"--model.init_args.alpha_equiv={t.params['model.init_args.alpha_equiv']}" in Path(t.directory, "command.txt").read_text()
