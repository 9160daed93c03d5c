"""Weights & Biases tracking for `train --wandb` (rank 0, through RunLog), beside MLflow's (tracking.py): the
resolved config as the run's config, the epoch records as `epoch/*` (x-axis `epoch`), the log-interval scalars
as `train_step/*` (x-axis `global_step`), the summary's numbers in the run summary, summary.json and
config.yaml as run files.

The project is WANDB_PROJECT or "visionzoo"; the run is named after the run folder and keeps its local files
under RUN_FOLDER/wandb/ unless WANDB_DIR says where. Online or offline is wandb's own choice (WANDB_MODE,
`wandb login` / WANDB_API_KEY); an offline run is uploaded later with `wandb sync`.

As with MLflow, the run starts before training (wandb.init, with a shorter init timeout unless
WANDB_INIT_TIMEOUT is set) and every later call goes through tracking.CallQueue: a slow or unreachable W&B
never holds up a training step, and the end of the run waits a bounded time (CLOSE_WAIT_S) for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..config import spelled
from ..core.errors import ConfigError
from ..core.extras import require
from .tracking import CallQueue, env_defaults

log = logging.getLogger("visionzoo")

DEFAULT_PROJECT = "visionzoo"
# the run's end status (RunLog.close) -> wandb's exit code: 0 is a finished run, any other a failed one; 255 for
# Ctrl-C, as wandb's own exit hook records it
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 255}
START_ENV = {"WANDB_INIT_TIMEOUT": "30"}  # wandb's default waits 90 s for a server that does not answer
CLOSE_WAIT_S = 60.0  # finish() uploads what is left: longer than MLflow's last calls, still bounded


def require_wandb() -> Any:
    """The wandb module, or the one-line MissingExtraError naming the extra (checked before the run starts)."""
    return require("wandb", "wandb", spelled("wandb"))


class WandbTracker:
    """One W&B run. A logging call that fails mid-run is warned about once and tracking stops: a W&B hiccup
    is no reason to lose the training run (metrics.jsonl holds the same numbers)."""

    def __init__(self, out: Path):
        self._wandb = require_wandb()
        self.out = Path(out)
        self._run: Any = None
        self._calls: CallQueue | None = None

    def start(self, config: dict[str, Any]) -> None:
        """Create the run with the resolved config; a run that cannot start (no API key, no server) stops the
        training run here, before training, in one line."""
        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        try:
            with env_defaults(START_ENV):
                run = self._wandb.init(
                    project=project, name=self.out.name, config=config,
                    # the run's files beside its other outputs, unless the user put them elsewhere
                    dir=None if os.environ.get("WANDB_DIR") else str(self.out),
                    # a run of its own: a caller's active wandb run (a notebook's) is neither finished nor
                    # reused, and wandb.run / wandb.log stay theirs
                    reinit="create_new")
            # W&B wants one increasing step across all log calls; epochs and global steps are two x-axes, so
            # each family of metrics gets its own step metric instead of wandb's implicit step (local calls,
            # made here: the run is not usable without them)
            run.define_metric("epoch")
            run.define_metric("global_step")
            run.define_metric("epoch/*", step_metric="epoch")
            run.define_metric("train_step/*", step_metric="global_step")
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{spelled('wandb')}: cannot start a run in project {project}: {message}") from None
        self._run = run
        self._calls = CallQueue("W&B")
        mode = "offline" if getattr(run, "offline", False) else "online"
        log.info("W&B run %s (project %s, %s) in %s", run.id, project, mode, run.dir)

    def scalars(self, kind: str, values: dict[str, float], step: int) -> None:
        """The log-interval read-outs (kind: train_step) at their global step."""
        if values:
            self._call("log", {"global_step": step, **{f"{kind}/{k}": v for k, v in values.items()}})

    def epoch(self, values: dict[str, float], epoch: int) -> None:
        if values:
            self._call("log", {"epoch": epoch, **{f"epoch/{k}": v for k, v in values.items()}})

    def summary(self, values: dict[str, float]) -> None:
        """summary.json's numbers (best_top1, epochs_run, ...) as the run's summary."""
        if values:
            self._call("summary.update", values)

    def files(self, *paths: Path) -> None:
        for path in paths:
            if path.exists():
                # base_path: saved under its own name, not under the run folder's path
                self._call("save", str(path), base_path=str(path.parent), policy="now")

    def end(self, status: str = "FINISHED", wait_s: float | None = None) -> None:
        """Finish the run as finished (FINISHED) or failed (FAILED, KILLED), waiting at most wait_s
        (CLOSE_WAIT_S) for W&B; safe to call again. Also after a failed call: a run left unfinished is finished
        by wandb's exit hook after the command said it was done, with a traceback when W&B is still down; a
        finish that fails here is quiet (tracking already warned, metrics.jsonl has the numbers)."""
        if self._run is None or self._calls is None:
            return
        run, exit_code = self._run, EXIT_CODES.get(status, 1)

        def finish() -> None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # said once at debug level: the warning that stopped tracking came first
                log.debug("W&B finish failed: %s", e)

        self._calls.put(finish, final=True)
        self._run = None
        self._calls.close(CLOSE_WAIT_S if wait_s is None else wait_s)

    def flush(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Wait (at most wait_s) until the calls queued so far are made."""
        if self._calls is not None:
            self._calls.join(wait_s)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._run is None or self._calls is None:
            return
        target = self._run
        for name in method.split("."):  # "summary.update": a method of the run's summary
            target = getattr(target, name)
        self._calls.put(target, *args, **kwargs)
