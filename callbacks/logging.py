"""Logging that needs no account and never hangs, progress that reads well in a terminal and in CI.

* ``WandbLogger``: Lightning's W&B logger that decides online/offline *before* ``wandb.init``:
  offline when there is no API key (``WANDB_API_KEY`` or a netrc entry for the W&B host) or the
  host is unreachable (a short TCP probe), and it falls back to offline if an online
  ``wandb.init`` fails or times out. Offline runs land in ``<save_dir>/wandb/offline-run-*``;
  upload them later with ``wandb sync <that folder>``. ``WANDB_MODE`` set by the user wins.
* ``ProgressBar``: tqdm bars when stdout is a terminal; otherwise (CI logs, ``nohup``, pipes)
  one plain line every ``log_every_n_steps`` steps and one per validation / test.
* ``MetricsJSON``: writes the logged metrics (last value of each and the history of every
  validation) to a JSON file; the offline sweep runner (``sweep.py``) reads it back.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from utils.io import atomic_write_text
from utils.progress import progress_mode
from utils.trainer import run_dir, time_budget

METRICS_FILE_ENV = "SCENEMOTION_METRICS_FILE"
DEFAULT_WANDB_HOST = "https://api.wandb.ai"


# ---------------------------------------------------------------------------------------- W&B
def wandb_host() -> str:
    """Host name of the W&B server (``WANDB_BASE_URL`` or api.wandb.ai)."""
    return urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).hostname or "api.wandb.ai"


def has_wandb_credentials(host: str | None = None) -> bool:
    """``WANDB_API_KEY`` is set, or the netrc file (``$NETRC`` or ``~/.netrc``) has the host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host or wandb_host()) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """One TCP connection attempt with a timeout (no DNS or connect hang beyond ``timeout``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_offline_reason(probe_timeout: float = 3.0) -> str | None:
    """Why W&B must run offline (``None`` when online should work)."""
    host = wandb_host()
    if not has_wandb_credentials(host):
        return f"no W&B API key (WANDB_API_KEY or a netrc entry for {host}; run `wandb login` to add one)"
    port = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).port or 443
    if not host_reachable(host, port, probe_timeout):
        return f"{host}:{port} is not reachable within {probe_timeout:g} s"
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that works without an account or a network.

    Mode, decided on first use on rank zero: ``offline=True`` forces offline; ``offline=False``
    forces online; ``None`` (default) respects ``WANDB_MODE`` if the user set it, else goes
    offline when there is no API key or the W&B host does not answer a TCP probe within
    ``probe_timeout`` seconds. An online ``wandb.init`` that fails (or exceeds
    ``init_timeout`` seconds) is retried offline, so training never waits on the network.
    Offline runs are written to ``<save_dir>/wandb/offline-run-*``; ``wandb sync <folder>``
    uploads them later.

    ``save_dir`` defaults to ``$WANDB_DIR`` or ``.``, ``project`` to ``$WANDB_PROJECT`` or
    ``scenemotion``; ``group`` defaults to ``$WANDB_RUN_GROUP`` (the sweep runner sets it).
    Other keyword arguments go to ``wandb.init``.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        version: str | None = None,
        offline: bool | None = None,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        probe_timeout: float = 3.0,
        init_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        if probe_timeout <= 0 or init_timeout <= 0:
            raise ValueError(f"probe_timeout and init_timeout must be > 0 seconds, got {probe_timeout} and {init_timeout}.")
        save_dir = save_dir or os.environ.get("WANDB_DIR") or "."
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        extra = {k: v for k, v in dict(entity=entity, group=group, tags=tags, notes=notes, job_type=job_type).items() if v is not None}
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=bool(offline),
            project=project or os.environ.get("WANDB_PROJECT") or "scenemotion",
            log_model=log_model,
            prefix=prefix,
            **extra,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb warns about the (deprecated) setting even when None
        self._offline_request = offline
        self._probe_timeout = probe_timeout
        self._init_timeout = init_timeout
        self.offline_reason: str | None = None

    def _choose_mode(self) -> None:
        """Set ``WANDB_MODE`` for the ``wandb.init`` to come (rank zero, once)."""
        if self._offline_request is True:
            self.offline_reason = "offline=True"
        elif self._offline_request is None:
            user_mode = os.environ.get("WANDB_MODE")
            if user_mode:
                if user_mode in ("offline", "dryrun"):
                    self.offline_reason = f"WANDB_MODE={user_mode}"
            else:
                self.offline_reason = wandb_offline_reason(self._probe_timeout)
        if self.offline_reason is not None:
            self._offline = True
            os.environ["WANDB_MODE"] = "offline"
            print(
                f"W&B: offline ({self.offline_reason}). The run is saved under {Path(self.save_dir or '.').resolve()}/wandb/; "
                f"upload it later with `wandb sync <that offline-run folder>`.",
                file=sys.stderr,
                flush=True,
            )
        self._wandb_init.setdefault("settings", _wandb_settings(self._init_timeout))

    @property
    @rank_zero_experiment
    def experiment(self):  # type: ignore[override]
        if self._experiment is None:
            self._choose_mode()
            try:
                return _LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - any online failure: fall back, never hang
                if self._offline:
                    raise
                self._experiment = None
                self._offline = True
                os.environ["WANDB_MODE"] = "offline"
                print(f"W&B: online init failed ({type(exc).__name__}: {exc}); continuing offline.", file=sys.stderr, flush=True)
                return _LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        return self._experiment


def _wandb_settings(init_timeout: float):
    import wandb

    return wandb.Settings(init_timeout=init_timeout, silent=True)


# ---------------------------------------------------------------------------------------- progress
def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _format_metrics(metrics: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    parts = []
    for key, value in sorted(metrics.items()):
        if keys is not None and not key.startswith(keys):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        parts.append(f"{key}={value:.4g}")
    return "  ".join(parts)


class ProgressBar(TQDMProgressBar):
    """tqdm bars in a terminal; plain, one-line-per-``log_every_n_steps`` output elsewhere.

    Args:
        mode: ``'auto'`` (tqdm if stdout is a TTY, else plain lines), ``'tqdm'`` or ``'plain'``.
            ``SCENEMOTION_PROGRESS=tqdm|plain`` overrides ``'auto'``.
        log_every_n_steps: plain mode prints a line every this many optimizer steps (and
            at the end of every epoch, validation and test).
        refresh_rate / leave: as in Lightning's ``TQDMProgressBar``.

    A plain line reads ``[train] epoch 2  step 1200/5000 (24%)  3.1 it/s  elapsed 6m27s  eta 20m26s  loss=0.0123``.
    """

    def __init__(
        self,
        mode: Literal["auto", "tqdm", "plain"] = "auto",
        log_every_n_steps: int = 50,
        refresh_rate: int = 1,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        if mode not in ("auto", "tqdm", "plain"):
            raise ValueError(f"ProgressBar mode must be 'auto', 'tqdm' or 'plain', got {mode!r}.")
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}.")
        if mode == "auto":
            mode = progress_mode()
        self.plain = mode == "plain"
        self.log_every_n_steps = log_every_n_steps
        self._t0, self._step0, self._printed_step = 0.0, 0, -1

    @property
    def is_disabled(self) -> bool:
        """Plain mode creates Lightning's tqdm bars disabled (they print nothing)."""
        return self.plain or super().is_disabled

    def _line(self, text: str) -> None:
        if self.is_enabled:
            print(text, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._t0, self._step0 = time.monotonic(), trainer.global_step

    def _train_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One line per step at most: progress, average speed since start, ETA and the bar's metrics."""
        step = trainer.global_step
        if step == self._printed_step:
            return
        self._printed_step = step
        elapsed = time.monotonic() - self._t0
        rate = (step - self._step0) / max(elapsed, 1e-9)
        total = trainer.estimated_stepping_batches
        progress, eta_s, eta_note = f"step {step}", math.inf, ""
        if math.isfinite(total) and total > 0:
            progress += f"/{int(total)} ({100.0 * step / total:.0f}%)"
            if rate > 0:
                eta_s = (total - step) / rate
        timer = time_budget(trainer)
        time_left = timer.time_remaining() if timer is not None else math.inf
        if time_left < eta_s:  # trainer.max_time ends the run first
            eta_s, eta_note = max(time_left, 0.0), " (max_time)"
        eta = f"  eta {_format_seconds(eta_s)}{eta_note}" if math.isfinite(eta_s) else ""
        metrics = _format_metrics(self.get_metrics(trainer, pl_module))
        self._line(f"[train] epoch {trainer.current_epoch}  {progress}  {rate:.3g} it/s  "
                   f"elapsed {_format_seconds(elapsed)}{eta}  {metrics}".rstrip())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.plain and trainer.global_step % self.log_every_n_steps == 0:
            self._train_line(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.plain:
            self._train_line(trainer, pl_module)

    def _eval_line(self, trainer: pl.Trainer, stage: str, prefixes: tuple[str, ...]) -> None:
        metrics = _format_metrics(trainer.callback_metrics, prefixes)
        self._line(f"[{stage}] epoch {trainer.current_epoch}  step {trainer.global_step}  {metrics}".rstrip())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.plain and not trainer.sanity_checking:
            self._eval_line(trainer, "val", ("val",))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        if self.plain:
            self._eval_line(trainer, "test", ("test",))


# ---------------------------------------------------------------------------------------- metrics file
def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class MetricsJSON(pl.Callback):
    """Writes ``{"summary": last value of every metric, "history": [one entry per validation]}``.

    Path: ``path`` if given, else ``$SCENEMOTION_METRICS_FILE``, else ``<run dir>/metrics.json``.
    Written atomically on rank zero after every validation and at the end of fit / test, so a
    killed run leaves the metrics of its last validation behind.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, float] = {}

    def _target(self, trainer: pl.Trainer) -> Path:
        return Path(self.path or os.environ.get(METRICS_FILE_ENV) or run_dir(trainer) / "metrics.json")

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, record: bool) -> None:
        metrics = _floats(trainer.callback_metrics)
        self.summary.update(metrics)
        if record:
            self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **metrics})
        payload = {"summary": {**self.summary, "step": trainer.global_step, "epoch": trainer.current_epoch}, "history": self.history}
        atomic_write_text(self._target(trainer), json.dumps(payload, indent=1) + "\n")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, record=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, record=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, record=True)
