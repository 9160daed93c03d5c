"""MLflow experiment tracking for `train --mlflow` (rank 0, through RunLog): the resolved config as params,
the epoch records and log-interval scalars as metrics, the summary and config.yaml as artifacts.

The tracking URI is MLflow's own choice (MLFLOW_TRACKING_URI, else its default); the experiment is
MLFLOW_EXPERIMENT_NAME or "visionzoo"; the run is named after the run folder. The client API is used, not
mlflow's fluent one: no process-global active run that a caller's own mlflow use could collide with.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.extras import require

log = logging.getLogger("visionzoo")

DEFAULT_EXPERIMENT = "visionzoo"
PARAMS_PER_BATCH = 100  # MLflow's log_batch limits: 100 params and 1000 metrics per call
METRICS_PER_BATCH = 1000
PARAM_VALUE_LIMIT = 6000  # MLflow refuses longer param values


def require_mlflow() -> Any:
    """The mlflow module, or the one-line MissingExtraError naming the extra (checked before the run starts)."""
    return require("mlflow", "mlflow", "--mlflow")


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 0.1}, "epochs": 2} -> {"optim.lr": "0.1", "epochs": "2"} (MLflow params are strings)."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flat_params(value, f"{name}."))
        else:
            params[name] = str(value)[:PARAM_VALUE_LIMIT]
    return params


def numeric(values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The int and float values (bools are flags, not metrics; None is a value the epoch lacks)."""
    return {k: float(v) for k, v in values.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker:
    """One MLflow run. A logging call that fails mid-run is warned about once and tracking stops: a tracking
    server's hiccup is no reason to lose the training run (metrics.jsonl holds the same numbers)."""

    def __init__(self, out: Path):
        self._mlflow = require_mlflow()
        self.out = Path(out)
        self.run_id: str | None = None
        self._client: Any = None

    def start(self, config: dict[str, Any]) -> None:
        """Create the run and log the resolved config; a store that cannot be reached stops the run here,
        before training, in one line."""
        from mlflow.entities import Param

        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        try:
            client = self._mlflow.tracking.MlflowClient()
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            run = client.create_run(experiment_id, run_name=self.out.name)
        except Exception as e:
            uri = self._mlflow.get_tracking_uri()
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"--mlflow: cannot start a run at {uri}: {message}") from None
        self._client, self.run_id = client, run.info.run_id
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self._call("log_batch", self.run_id, params=params[i:i + PARAMS_PER_BATCH])
        log.info("MLflow run %s (experiment %s) at %s", self.run_id, experiment, self._mlflow.get_tracking_uri())

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None or not values:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._call("log_batch", self.run_id, metrics=metrics[i:i + METRICS_PER_BATCH])

    def artifacts(self, *paths: Path) -> None:
        for path in paths:
            if self.run_id is not None and path.exists():
                self._call("log_artifact", self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED; safe to call again."""
        if self.run_id is None:
            return
        self._call("set_terminated", self.run_id, status)
        self.run_id = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self._client, method)(*args, **kwargs)
        except Exception as e:
            log.warning("MLflow logging stopped (%s: %s); metrics.jsonl has the run's numbers",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.run_id = None
