"""Offline hyper-parameter sweeps with W&B's open-source sweep engine (the ``sweeps`` package).

    python sweep.py configs/sweeps/equivariant_mnist.yaml --count 8 [--method random] [--seed 0]

The sweep file is a real W&B sweep configuration (``wandb sweep <file>`` + ``wandb agent``
run it online). This runner does the same on one machine, without an account:

1. validates the file with the engine's schema (``sweeps.schema_violations_from_proposed_config``);
2. asks the engine for the next trial (``sweeps.next_run``: grid / random / bayes; bayes sees
   the results of the finished trials);
3. runs the trial as a subprocess built from the file's ``command`` exactly as ``wandb agent``
   does (``${env}`` -> ``/usr/bin/env``, ``${interpreter}`` -> this Python, ``${program}``,
   ``${args}`` -> ``--name=value`` per parameter, ``${args_no_hyphens}``, ``${args_json}``, ...),
   followed by ``--trainer.default_root_dir <trial dir>`` and a ``callbacks.MetricsJSON``
   callback, with ``WANDB_MODE=offline`` and ``WANDB_RUN_GROUP=<sweep id>`` so the trials'
   offline W&B runs are grouped by sweep (``wandb sync <trial dir>/wandb/offline-run-*``
   uploads them later);
4. reads the trial's metrics (``<trial dir>/metrics.json``), reports them to the engine, and
   prints a leaderboard of the target metric (also ``<sweep dir>/leaderboard.json``).

Everything lands in ``<out>/<sweep id>/``: ``sweep.yaml`` (the validated config),
``trials/<trial>/{output.log,metrics.json,...}`` and ``leaderboard.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
METRICS_FILE_ENV = "SCENEMOTION_METRICS_FILE"  # read by callbacks.MetricsJSON


class SweepConfigError(ValueError):
    """A sweep file that the engine or this runner cannot use (the message says what to fix)."""


def _engine():
    try:
        with warnings.catch_warnings():  # sweeps 0.3 declares a pydantic-v1 style Config (UserWarning)
            warnings.simplefilter("ignore", UserWarning)
            import sweeps
    except ImportError as exc:  # optional extra (it pins numpy < 2)
        raise SystemExit(
            "The offline sweep runner needs W&B's sweep engine: pip install 'scenemotion[sweeps]' (package `sweeps`)."
        ) from exc
    return sweeps


def schema_violations(config: Any) -> list[str]:
    """The engine's schema violations plus what this runner needs (``metric`` for bayes, ``${args}``)."""
    if not isinstance(config, dict):
        return ["the sweep file must be a YAML mapping (method, metric, parameters, program, command)"]
    try:
        problems = list(_engine().schema_violations_from_proposed_config(config))
    except (ValueError, TypeError, KeyError) as exc:  # the engine raises on some malformed parameters
        problems = [str(exc.args[0]) if exc.args else type(exc).__name__]
    if config.get("method") == "bayes" and "metric" not in config:
        problems.append("method `bayes` needs a `metric: {name: ..., goal: minimize|maximize}` section")
    command = config.get("command", DEFAULT_COMMAND)
    if isinstance(command, list) and not any(isinstance(c, str) and c.startswith("${args") for c in command):
        problems.append("`command` passes no parameters: add `${args}` (W&B turns it into --name=value flags)")
    if isinstance(command, list) and "${program}" in command and not config.get("program"):
        problems.append("`command` uses ${program} but there is no `program:` entry")
    return list(dict.fromkeys(problems))  # the engine reports some problems twice (e.g. min >= max)


def load_sweep(path: str | os.PathLike, method: str | None = None) -> dict[str, Any]:
    """Read and validate a sweep file; ``method`` overrides its ``method``. Returns the filled config."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"Sweep file {path} does not exist (see configs/sweeps/ for examples).")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepConfigError(f"{path} is not valid YAML: {exc}") from exc
    if method is not None and isinstance(config, dict):
        config["method"] = method
    problems = schema_violations(config)
    if problems:
        raise SweepConfigError(f"{path} is not a valid W&B sweep configuration:\n  - " + "\n  - ".join(problems))
    return dict(_engine().SweepConfig(config))


def build_command(config: dict[str, Any], params: dict[str, dict[str, Any]], run_id: str, work_dir: Path) -> list[str]:
    """The trial command, macro for macro as ``wandb agent`` builds it (``wandb_agent.py``)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    template = sweep_utils.create_sweep_command(config.get("command") or DEFAULT_COMMAND)
    macros: dict[str, list[str]] = dict(sweep_utils.create_sweep_command_args({"args": params}))
    macros.pop("args_dict", None)
    json_file = work_dir / f"config-{run_id}.json"
    macros.update(
        interpreter=[sys.executable],
        program=[str(config.get("program", ""))],
        env=["/usr/bin/env"] if os.name != "nt" else [],
        args_json_file=[str(json_file)],
    )
    if "${args_json_file}" in template:
        json_file.write_text(macros["args_json"][0])
    command: list[str] = []
    for chunk in map(str, template):
        if chunk.startswith("${") and chunk.endswith("}"):
            command += macros.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


@dataclass
class Trial:
    """One proposed configuration and what became of it."""

    name: str
    params: dict[str, Any]
    state: str = "pending"
    metric: float | None = None
    seconds: float = 0.0
    directory: str = ""
    summary: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def sweep_run(self):
        sweeps = _engine()
        return sweeps.SweepRun(
            name=self.name,
            state=sweeps.RunState(self.state),
            config={k: {"value": v} for k, v in self.params.items()},
            summary_metrics=self.summary,
            history=self.history,
        )


def read_metrics(path: Path) -> tuple[dict[str, float], list[dict[str, float]]]:
    """``(summary, history)`` from a ``callbacks.MetricsJSON`` file (empty when missing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}, []
    return dict(data.get("summary", {})), list(data.get("history", []))


def target_value(trial: Trial, metric: dict[str, Any] | None) -> float | None:
    """Best value of the target metric over the trial's history and summary (as W&B's bayes uses it)."""
    if not metric:
        return None
    try:
        return float(trial.sweep_run().metric_extremum(metric["name"], "minimum" if metric.get("goal") == "minimize" else "maximum"))
    except (ValueError, KeyError):
        return None


def run_trial(command: list[str], trial: Trial, trial_dir: Path, group: str, timeout: float | None, verbose: bool) -> None:
    """Run one trial as a subprocess (own process group, output to ``output.log``)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = trial_dir / "metrics.json"
    env = dict(os.environ)
    env.update({
        "WANDB_MODE": "offline",
        "WANDB_RUN_GROUP": group,
        "WANDB_NAME": trial.name,
        "WANDB_RUN_ID": trial.name,
        "WANDB_DIR": str(trial_dir),
        "WANDB_SILENT": "true",
        METRICS_FILE_ENV: str(metrics_file),
        "SCENEMOTION_PROGRESS": env.get("SCENEMOTION_PROGRESS", "plain"),
    })
    full = command + [f"--trainer.default_root_dir={trial_dir}", "--trainer.callbacks+=callbacks.MetricsJSON"]
    (trial_dir / "command.txt").write_text(" ".join(full) + "\n")
    start = time.monotonic()
    with open(trial_dir / "output.log", "w") as log:
        proc = subprocess.Popen(full, stdout=subprocess.PIPE if verbose else log, stderr=subprocess.STDOUT, env=env,
                                text=True, start_new_session=True)
        try:
            if verbose:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    sys.stdout.write("    " + line)
            code = proc.wait(timeout=timeout)
            trial.state = "finished" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            trial.state = "killed"
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            trial.state = "killed"
            raise
        finally:
            trial.seconds = time.monotonic() - start
    trial.summary, trial.history = read_metrics(metrics_file)
    if trial.state == "finished" and not trial.summary:
        trial.state = "failed"
        with open(trial_dir / "output.log", "a") as log:
            log.write(f"\n[sweep] the trial wrote no metrics to {metrics_file}\n")


def leaderboard(trials: Sequence[Trial], metric: dict[str, Any] | None) -> str:
    """A plain-text table, best trial first (failed trials last)."""
    from utils.report import format_table

    sign = -1.0 if metric and metric.get("goal") == "maximize" else 1.0
    ranked = sorted(trials, key=lambda t: (t.metric is None, sign * (t.metric or 0.0)))
    names = sorted({k for t in trials for k in t.params})
    short = {k: k.split(".")[-1] for k in names}
    title = f"Sweep leaderboard: {metric['name']} ({metric.get('goal', 'minimize')})" if metric else "Sweep trials"
    rows = {
        f"{rank}. {t.name}": {
            "state": t.state,
            (metric or {}).get("name", "metric"): t.metric,
            "time": f"{t.seconds:.0f}s",
            **{short[k]: t.params.get(k) for k in names},
        }
        for rank, t in enumerate(ranked, 1)
    }
    columns = ["state", (metric or {}).get("name", "metric"), "time", *[short[k] for k in names]]
    return format_table(title, rows, columns)


def run_sweep(path: str | os.PathLike, count: int, method: str | None = None, out: str | os.PathLike = "runs/sweeps",
              name: str | None = None, seed: int = 0, timeout: float | None = None, verbose: bool = False) -> list[Trial]:
    """Validate ``path``, then propose and run up to ``count`` trials; returns them (also printed)."""
    if count < 1:
        raise SweepConfigError(f"--count must be >= 1, got {count}.")
    config = load_sweep(path, method)
    program = config.get("program")
    if program and not Path(program).exists():
        raise SweepConfigError(f"The sweep's program {program!r} is not in {Path.cwd()}; run sweep.py from the repository root.")
    sweeps = _engine()
    sweep_id = name or f"{Path(path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    sweep_dir = Path(out) / sweep_id
    if sweep_dir.exists():
        raise SweepConfigError(f"{sweep_dir} already exists; choose another --name or --out.")
    (sweep_dir / "trials").mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    random.seed(seed)  # the engine's random / bayes proposals draw from both generators
    np.random.seed(seed)
    metric = config.get("metric")
    trials: list[Trial] = []
    print(f"[sweep] {sweep_id}: method={config['method']}, up to {count} trial(s), results in {sweep_dir}", flush=True)
    try:
        for k in range(count):
            proposal = sweeps.next_run(config, [t.sweep_run() for t in trials])
            if proposal is None:
                print(f"[sweep] the {config['method']} search is exhausted after {k} trial(s).", flush=True)
                break
            params = {key: value["value"] for key, value in proposal.config.items()}
            trial = Trial(name=f"{sweep_id}-{k:03d}", params=params)
            trial.directory = str(sweep_dir / "trials" / trial.name)
            trials.append(trial)
            command = build_command(config, proposal.config, trial.name, sweep_dir)
            shown = ", ".join(f"{key.split('.')[-1]}={value}" for key, value in params.items())
            print(f"[sweep] trial {k + 1}/{count} {trial.name}: {shown}", flush=True)
            run_trial(command, trial, Path(trial.directory), sweep_id, timeout, verbose)
            trial.metric = target_value(trial, metric)
            value = "-" if trial.metric is None else f"{trial.metric:.5g}"
            print(f"[sweep]   {trial.state} in {trial.seconds:.0f}s; {(metric or {}).get('name', 'metric')} = {value}"
                  + ("" if trial.state == "finished" else f" (see {trial.directory}/output.log)"), flush=True)
            if trial.state != "finished":
                _print_tail(Path(trial.directory) / "output.log")
    except KeyboardInterrupt:
        print("[sweep] interrupted; leaderboard of the trials so far:", flush=True)
    table = leaderboard(trials, metric)
    print("\n" + table + "\n", flush=True)
    from utils.io import atomic_write_text

    atomic_write_text(sweep_dir / "leaderboard.json", json.dumps(
        {"sweep": sweep_id, "method": config["method"], "metric": metric,
         "trials": [{k: v for k, v in t.__dict__.items() if k != "history"} for t in trials]}, indent=2) + "\n")
    if shutil.which("wandb") and any(sweep_dir.glob("trials/*/wandb/offline-run-*")):
        print(f"[sweep] upload later: wandb sync {sweep_dir}/trials/*/wandb/offline-run-*", flush=True)
    return trials


def _print_tail(path: Path, lines: int = 15) -> None:
    try:
        tail = path.read_text().splitlines()[-lines:]
    except OSError:
        return
    print("\n".join("    | " + line for line in tail), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_file", help="a W&B sweep YAML, e.g. configs/sweeps/equivariant_mnist.yaml")
    parser.add_argument("--count", type=int, default=4, help="number of trials (grid stops early when exhausted)")
    parser.add_argument("--method", choices=["grid", "random", "bayes"], help="override the file's method")
    parser.add_argument("--out", default="runs/sweeps", help="folder of sweep results (default: runs/sweeps)")
    parser.add_argument("--name", help="sweep id (default: <file stem>-<timestamp>); groups the W&B runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random / bayes proposals")
    parser.add_argument("--timeout", type=float, help="kill a trial after this many seconds")
    parser.add_argument("--verbose", action="store_true", help="stream each trial's output")
    parser.add_argument("--validate-only", action="store_true", help="only check the sweep file against the schema")
    args = parser.parse_args(argv)
    try:
        if args.validate_only:
            load_sweep(args.sweep_file, args.method)
            print(f"{args.sweep_file}: valid W&B sweep configuration")
            return 0
        trials = run_sweep(args.sweep_file, args.count, args.method, args.out, args.name, args.seed, args.timeout, args.verbose)
    except SweepConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if any(t.state == "finished" for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
