"""MLflow experiment tracking for `train --mlflow` (rank 0, through RunLog): the resolved config as params,
the epoch records and log-interval scalars as metrics, the summary and config.yaml as artifacts.

The tracking URI is MLflow's own choice (MLFLOW_TRACKING_URI, else its default); the experiment is
MLFLOW_EXPERIMENT_NAME or "visionzoo"; the run is named after the run folder. The client API is used, not
mlflow's fluent one: no process-global active run that a caller's own mlflow use could collide with.

A tracking server is never in the training loop's way: the run is created before training with short HTTP
timeouts (a server that does not answer stops the run there, in one line), and every later call goes through
`CallQueue`, a bounded queue that one background thread empties. A slow or dead server costs the training
steps nothing; calls that do not fit are dropped (counted), and the end of the run waits a bounded time for
the rest. The run's end status (FINISHED, FAILED, KILLED) is sent even after tracking stopped, and tried once
more with the start's short timeout when the queue could not send it, so a run is not left RUNNING when the
server can still be told. W&B's tracker (tracking_wandb.py) uses the same queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import spelled
from ..core.errors import ConfigError, plural
from ..core.extras import require

log = logging.getLogger("visionzoo")

DEFAULT_EXPERIMENT = "visionzoo"
PARAMS_PER_BATCH = 100  # MLflow's log_batch limits: 100 params and 1000 metrics per call
METRICS_PER_BATCH = 1000
PARAM_VALUE_LIMIT = 6000  # MLflow refuses longer param values
QUEUE_SIZE = 1000  # tracking calls waiting for the server; beyond it they are dropped (and counted)
CLOSE_WAIT_S = 15.0  # how long the end of a run waits for queued calls to reach the server
# MLflow's HTTP client, unless the user set these (its defaults: 120 s a request, 7 retries with backoff, i.e.
# a quarter of an hour on a server that does not answer): the run's start, in the training's way, is short;
# the background calls get longer, as they hold nothing up
START_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
CALL_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


def require_mlflow() -> Any:
    """The mlflow module, or the one-line MissingExtraError naming the extra (checked before the run starts)."""
    return require("mlflow", "mlflow", spelled("mlflow"))


def first_line(e: BaseException) -> str:
    """ "TypeName: the message's first line", for a warning about a tracking call that failed."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def set_env_defaults(values: dict[str, str]) -> list[str]:
    """Set these environment variables where the user set none (a client library reads its timeouts and retries
    from them per call); returns the names set, for unset_env. Main thread only: setenv is not thread-safe."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    return added


def unset_env(names: list[str]) -> None:
    for name in names:
        os.environ.pop(name, None)


@contextlib.contextmanager
def env_defaults(values: dict[str, str]) -> Iterator[None]:
    """set_env_defaults for the length of a block."""
    added = set_env_defaults(values)
    try:
        yield
    finally:
        unset_env(added)


class CallQueue:
    """A tracker's calls, made in order by one daemon thread, so that a slow or unreachable server never
    delays a training step. put() never blocks: a call that finds the queue full is dropped and counted (one
    warning). The first call that raises stops tracking (one warning naming the failure; metrics.jsonl has
    every number); the calls after it are discarded. close() waits a bounded time for what is queued."""

    def __init__(self, name: str, size: int = QUEUE_SIZE):
        self.name = name
        self.dropped = 0
        self.failure: str | None = None
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple, dict, bool] | None] = queue.Queue(size)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"visionzoo-{name}-tracking", daemon=True)
        self._thread.start()

    def put(self, fn: Callable[..., Any], *args: Any, final: bool = False, **kwargs: Any) -> None:
        """Queue fn(*args, **kwargs). final: made even after tracking stopped (the run's end status: a failed
        call need not mean the server is gone, and a run left RUNNING misleads)."""
        if self._closed or (self.failure is not None and not final):
            return
        try:
            self._queue.put_nowait((fn, args, kwargs, final))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%s is not keeping up (the tracking server is slow or down): dropping tracking calls "
                            "until it does; metrics.jsonl has the run's numbers", self.name)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args, kwargs, final = item
                if self.failure is None or final:  # once tracking stopped, the rest is discarded
                    self._make(fn, args, kwargs)
            finally:
                self._queue.task_done()

    def _make(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # any failure of a tracking call stops tracking, never training
            if self.failure is None:  # said once
                self.failure = first_line(e)
                log.warning("%s logging stopped (%s); metrics.jsonl has the run's numbers", self.name,
                            self.failure)

    def join(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Wait up to wait_s until every call queued so far is made (or discarded); True if they were."""
        deadline = time.monotonic() + wait_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """No more calls; wait up to wait_s for the queued ones. True when all were made (or tracking stopped);
        False, with a warning naming the server's silence, when some were not."""
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(queue.Full):  # full: the thread is stuck, and join below says so
            self._queue.put(None, timeout=wait_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("%s: the tracking server did not answer within %.0f s; %s not sent, and the run there may "
                        "not show how it ended; metrics.jsonl has the run's numbers", self.name, wait_s,
                        plural(self._queue.qsize() + 1, "tracking call"))
            return False
        if self.dropped and self.failure is None:
            log.warning("%s: %s dropped while the server was slow; metrics.jsonl has the run's numbers",
                        self.name, plural(self.dropped, "tracking call"))
        return True


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
    """One MLflow run. Created before training (a store that cannot be reached stops the run there); every
    later call is queued (CallQueue), so a slow or dead server never holds up training, and a call that fails
    mid-run stops tracking with one warning (metrics.jsonl holds the same numbers)."""

    def __init__(self, out: Path):
        self._mlflow = require_mlflow()
        self.out = Path(out)
        self.run_id: str | None = None
        self._client: Any = None
        self._calls: CallQueue | None = None
        self._env_set: list[str] = []

    def start(self, config: dict[str, Any]) -> None:
        """Create the run and log the resolved config; a store that cannot be reached (or does not answer within
        START_HTTP's timeout) stops the run here, before training, in one line."""
        from mlflow.entities import Param

        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        try:
            with env_defaults(START_HTTP):
                client = self._mlflow.tracking.MlflowClient()
                found = client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
                run = client.create_run(experiment_id, run_name=self.out.name)
        except Exception as e:
            uri = self._mlflow.get_tracking_uri()
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"{spelled('mlflow')}: cannot start a run at {uri}: {message}") from None
        self._client, self.run_id = client, run.info.run_id
        self._env_set = set_env_defaults(CALL_HTTP)  # before the thread starts; undone at end()
        self._calls = CallQueue("MLflow")
        params = [Param(k, v) for k, v in flat_params(config).items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self._call("log_batch", self.run_id, params=params[i:i + PARAMS_PER_BATCH])
        log.info("MLflow run %s (experiment %s) at %s", self.run_id, experiment, self._mlflow.get_tracking_uri())

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None or not values:
            return
        stamp = int(time.time() * 1000)  # when measured, not when the queue gets to it
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._call("log_batch", self.run_id, metrics=metrics[i:i + METRICS_PER_BATCH])

    def artifacts(self, *paths: Path) -> None:
        for path in paths:
            if self.run_id is not None and path.exists():
                self._call("log_artifact", self.run_id, str(path))

    def end(self, status: str = "FINISHED", wait_s: float | None = None) -> None:
        """Mark the run FINISHED, FAILED or KILLED, after the calls queued before it, waiting at most wait_s
        (CLOSE_WAIT_S) for the server; safe to call again."""
        if self.run_id is None or self._calls is None:
            return
        run_id, client, marked = self.run_id, self._client, threading.Event()

        def terminate() -> None:
            client.set_terminated(run_id, status)
            marked.set()

        self._calls.put(terminate, final=True)
        self.run_id = None
        answered = self._calls.close(CLOSE_WAIT_S if wait_s is None else wait_s)
        unset_env(self._env_set)
        self._env_set = []
        if not marked.is_set():
            # the queued call failed (the server died) or is stuck behind a hung one: one more try, from here,
            # with the start's short timeout, so a run that ended is not left RUNNING when the server can say so
            try:
                with env_defaults(START_HTTP):
                    client.set_terminated(run_id, status)
            except Exception as e:
                if answered:  # else close() has warned already
                    log.warning("MLflow: could not mark run %s %s (%s); it may still show RUNNING", run_id, status,
                                first_line(e))

    def flush(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Wait (at most wait_s) until the calls queued so far are made (tests, and a caller about to read the
        run back)."""
        if self._calls is not None:
            self._calls.join(wait_s)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._calls is not None:
            self._calls.put(getattr(self._client, method), *args, **kwargs)
