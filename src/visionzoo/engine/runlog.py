"""Run outputs on rank 0: train.log, metrics.jsonl (appended and flushed per line), summary.csv and
curves.png (one row / point per epoch, derived from metrics.jsonl's epoch lines), summary.json, optional
TensorBoard, MLflow (engine/tracking.py) and Weights & Biases (engine/tracking_wandb.py). Other ranks get a
disabled RunLog that writes nothing."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..config import spelled
from ..core.errors import ConfigError, plural
from ..core.files import atomic_path, json_safe, save_figure, write_json
from .step import format_duration
from .tracking import MlflowTracker, numeric
from .tracking_wandb import WandbTracker

log = logging.getLogger("visionzoo")


# summary.csv's columns, as timm's summary.csv: (column, epoch record key); val_top5, the EMA's and the
# multi-label ones only where they mean something (more than 5 classes, --ema, multi-label data)
CSV_COLUMNS = (("epoch", "epoch"), ("train_loss", "train_loss"), ("train_top1", "train_top1"),
               ("val_loss", "val_loss"), ("val_top1", "val_top1"), ("val_top5", "val_top5"),
               ("val_mAP", "val_mAP"), ("val_f1_micro", "val_f1_micro"), ("val_f1_macro", "val_f1_macro"),
               ("val_ema_top1", "val_ema_top1"), ("val_ema_mAP", "val_ema_mAP"), ("lr", "lr"),
               ("epoch_time_s", "epoch_time"), ("images_per_sec", "images_per_sec"))
SKIPPED_WARNINGS = 10  # unreadable images named by a warning line each, per run; the rest in one line
PLOT_EVERY_S = 60.0  # curves.png is redrawn after an epoch at most this often (and always at the end)


class RunLog:
    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = False, mlflow: bool = False,
                 wandb: bool = False):
        self.out, self.enabled, self.tb = Path(out), enabled, None
        self.mlflow: MlflowTracker | None = None
        self.wandb: WandbTracker | None = None
        self._handler: logging.Handler | None = None
        # set once the model is built: top-5 is shown only with more than 5 classes (it is 100 otherwise)
        self.num_classes: int | None = None
        self._plotted_at = time.monotonic()
        self._plots_missing = False
        self._epoch_rows: list[dict[str, Any]] | None = None  # epoch_rows(): read once, then appended to
        self._skipped_seen: set[str] = set()  # unreadable images already named in a warning line
        self._skipped_warned = 0
        self.run_eta_s: float | None = None  # the run's ETA, for the next epoch line (set by the epoch loop)
        if not enabled:
            return
        writer = _summary_writer_class() if tensorboard else None  # before anything is written
        # mlflow and wandb are imported here (a missing package stops the run before anything is written);
        # their runs start in track_config, once the config is resolved
        self.mlflow = MlflowTracker(self.out) if mlflow else None
        self.wandb = WandbTracker(self.out) if wandb else None
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("visionzoo")
        if logger.level == logging.NOTSET:  # train.log gets INFO even when the caller set up no logging
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        self._handler = handler
        if writer is not None:
            self.tb = writer(str(self.out / "tensorboard"))

    def track_config(self, config: dict[str, Any]) -> None:
        """Start the MLflow run (with --mlflow) with the resolved config as its params, and the W&B run (with
        --wandb) with it as its config."""
        if self.enabled and self.mlflow is not None:
            self.mlflow.start(config)
        if self.enabled and self.wandb is not None:
            self.wandb.start(config)

    def repair(self, epoch: int, step: int, record: dict[str, Any] | None) -> None:
        """metrics.jsonl as of a checkpoint at (epoch, step): lines after it go (the interrupted epoch's step
        lines, a duplicate), and the checkpoint's own epoch line is restored if the kill came before it."""
        path = self.out / "metrics.jsonl"
        if not self.enabled or not path.exists():
            return
        kept, seen = [], set()
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if row.get("type") == "epoch":
                if row.get("epoch", 0) > epoch or row.get("epoch") in seen:
                    continue
                seen.add(row.get("epoch"))
            elif row.get("step", 0) > step:
                continue
            kept.append(line)
        if record is not None and epoch and epoch not in seen:
            kept.append(json.dumps({"type": "epoch", **{k: json_safe(v) for k, v in record.items()}}))
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        line = {k: json_safe(v) for k, v in record.items()}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        return line

    def scalars(self, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append({"type": kind, **values})
        if self.tb is not None:
            for k, v in values.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, values["step"])
        if self.mlflow is not None:
            self.mlflow.metrics({f"{kind}/{k}": v for k, v in numeric(values, ("step",)).items()}, values["step"])
        if self.wandb is not None:
            self.wandb.scalars(kind, numeric(values, ("step",)), values["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        """The epoch's metrics line, TensorBoard/MLflow/W&B scalars and log line (with run_eta_s, the run's ETA
        the epoch loop sets while epochs remain), then summary.csv and, now and then, curves.png."""
        if not self.enabled:
            return
        line = self._append({"type": "epoch", **record})
        if self._epoch_rows is not None:
            self._epoch_rows.append(line)  # as the file holds it (json_safe), so a resumed run reads the same
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"epoch/{k}", v, record["epoch"])
            self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.metrics(numeric(record, ("epoch", "step")), record["epoch"])
        if self.wandb is not None:
            self.wandb.epoch(numeric(record, ("epoch", "step")), record["epoch"])
        parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}",
                 f"train top-1 {record['train_top1']:.2f}", f"{record['images_per_sec']:.1f} img/s",
                 f"lr {record['lr']:.4g}"]
        if "val_mAP" in record:  # multi-label: what chooses best.pth first
            parts.append(f"val mAP {record['val_mAP']:.4f}, F1 micro {record['val_f1_micro']:.4f}")
        if "val_top1" in record:
            parts.append(f"val top-1 {record['val_top1']:.2f}")
            if self.top5:
                parts.append(f"top-5 {record['val_top5']:.2f}")
            parts.append(f"val loss {record['val_loss']:.4f} ({plural(record['val_num_images'], 'image')})")
        if "val_ema_mAP" in record:
            parts.append(f"EMA val mAP {record['val_ema_mAP']:.4f}")
        if "val_ema_top1" in record:
            parts.append(f"EMA val top-1 {record['val_ema_top1']:.2f}")
        skipped = record.get("skipped_images", 0) + record.get("val_skipped_images", 0)
        if skipped:
            parts.append(f"skipped {plural(skipped, 'unreadable image')}")
        if self.run_eta_s is not None:
            parts.append(f"run ETA {format_duration(self.run_eta_s)}")
        log.info(" | ".join(parts))
        self._name_skipped(record.get("skipped_files") or [], record.get("skipped_images", 0))
        self.reports(plot=time.monotonic() - self._plotted_at >= PLOT_EVERY_S)

    def _name_skipped(self, names: list[str], count: int) -> None:
        """A warning line per unreadable training image the first time it is skipped (it is skipped again each
        epoch), at most SKIPPED_WARNINGS in a run, then how many more; the epoch record's skipped_files lists
        them (up to step.SKIPPED_NAMES_KEPT)."""
        new = [n for n in dict.fromkeys(names) if n not in self._skipped_seen]
        self._skipped_seen.update(new)
        room = max(0, SKIPPED_WARNINGS - self._skipped_warned)
        for name in new[:room]:
            log.warning("skipped unreadable image %s (another image stood in for it)", name)
        self._skipped_warned += min(room, len(new))
        if len(new) > room:
            more = len(new) - room
            log.warning("and %d more unreadable %s (metrics.jsonl's skipped_files lists them)", more,
                        "image" if more == 1 else "images")

    @property
    def top5(self) -> bool:
        return self.num_classes is None or self.num_classes > 5

    def epoch_rows(self) -> list[dict[str, Any]]:
        """metrics.jsonl's epoch lines (one per finished epoch: resuming repairs the file), read from the file
        once (the epochs of a resumed run's earlier part) and kept up to date by epoch() after that."""
        if self._epoch_rows is None:
            self._epoch_rows = self._read_epoch_rows()
        return self._epoch_rows

    def _read_epoch_rows(self) -> list[dict[str, Any]]:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            if '"epoch"' not in line:  # most lines are step lines: no JSON parse for them
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("type") == "epoch":
                rows.append(row)
        return rows

    def reports(self, plot: bool = True) -> None:
        """summary.csv (always; atomically, so a crash leaves the previous one) and curves.png (when plot)."""
        if not self.enabled:
            return
        rows = self.epoch_rows()
        with atomic_path(self.out / "summary.csv") as tmp:
            tmp.write_text(summary_csv(rows, self.top5))
        if plot and rows:
            self._plotted_at = time.monotonic()
            self._plot(rows)

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        if self._plots_missing:
            return
        try:
            fig = curves_figure(rows, self.top5)
        except ImportError:
            self._plots_missing = True  # said once per run
            log.info("curves.png skipped: matplotlib is not installed (pip install 'visionzoo[plots]')")
            return
        except Exception as e:  # a drawing is no reason to lose the run: summary.csv holds the same numbers
            log.warning("curves.png not drawn (%s: %s)", type(e).__name__, e)
            return
        save_figure(fig, self.out / "curves.png")

    def finish(self, summary: dict[str, Any], last_eval: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if last_eval is not None:
            write_json(self.out / "eval.json", last_eval)
        write_json(self.out / "summary.json", summary)
        self.reports(plot=True)
        if self.mlflow is not None:
            # the summary's numbers the last epoch line did not already log (epochs_run; best_top1 after a
            # resume that ran no epoch), at the last epoch's step
            last = summary.get("last") or {}
            values = {k: v for k, v in numeric(summary).items() if last.get(k) != v}
            self.mlflow.metrics(values, int(last.get("epoch", summary.get("epochs_run", 0))))
            self.mlflow.artifacts(self.out / "summary.json", self.out / "config.yaml")
        if self.wandb is not None:
            self.wandb.summary(numeric(summary))  # all of them: W&B's summary is a dict, not a metric series
            self.wandb.files(self.out / "summary.json", self.out / "config.yaml")
        made = [n for n in ("summary.csv", "curves.png", "best.pth") if (self.out / n).exists()]
        log.info("%s done; results in %s (metrics.jsonl, summary.json, config.yaml%s, last.pth)",
                 describe_epochs(summary), self.out, "".join(f", {n}" for n in made))
        self.close()

    def close(self, status: str = "FINISHED") -> None:
        """Detach train.log (and close TensorBoard; end the MLflow and W&B runs with status: FINISHED, FAILED
        or KILLED); safe to call again, and after a failed run."""
        if self.mlflow is not None:
            self.mlflow.end(status)
        if self.wandb is not None:
            self.wandb.end(status)
        if not self.enabled or self._handler is None:
            return
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        logging.getLogger("visionzoo").removeHandler(self._handler)
        self._handler.close()
        self._handler = None


def describe_epochs(summary: dict[str, Any]) -> str:
    """The run's epochs as a summary tells them: "6 epochs", or for a resumed run "6 epochs (4 in this session,
    resumed at epoch 2)": epochs_run counts this session's alone."""
    session = int(summary.get("epochs_run", 0))
    total = int(summary.get("epochs", session))
    text = plural(total, "epoch")
    if summary.get("resumed_at_epoch"):
        text += f" ({session} in this session, resumed at epoch {summary['resumed_at_epoch']})"
    return text


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"{spelled('tensorboard')} needs the tensorboard package: pip install "
                          "'visionzoo[tensorboard]'") from None
    return SummaryWriter


def summary_csv(rows: list[dict[str, Any]], top5: bool = True) -> str:
    """One line per epoch; a value the epoch lacks (no evaluation that epoch) is left empty."""
    present = {k for row in rows for k, v in row.items() if v is not None}
    columns = [(name, key) for name, key in CSV_COLUMNS
               if name in ("epoch", "train_loss", "train_top1", "lr", "epoch_time_s", "images_per_sec")
               or (key in present and (top5 or key != "val_top5"))]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    for row in rows:
        writer.writerow([_csv_value(row.get(key)) for _, key in columns])
    return buf.getvalue()


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def curves_figure(rows: list[dict[str, Any]], top5: bool = True) -> Any:
    """Loss, accuracy and learning rate per epoch, on the Agg canvas (no pyplot: the caller's backend is
    left alone). ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]
    marker = "o" if len(rows) <= 40 else None  # a point per epoch while they can be told apart

    def series(ax: Any, key: str, label: str, **style: Any) -> None:
        # only the epochs that have the value: an epoch without evaluation is no gap and no zero
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, marker=marker, markersize=4, **style)

    # one colour per source in every panel: train blue, val orange, EMA green
    series(loss_ax, "train_loss", "train", color="C0")
    series(loss_ax, "val_loss", "val", color="C1")
    series(acc_ax, "train_top1", "train top-1", color="C0")
    series(acc_ax, "val_top1", "val top-1", color="C1")
    if top5:
        series(acc_ax, "val_top5", "val top-5", color="C1", linestyle="--")
    series(acc_ax, "val_ema_top1", "val top-1 (EMA)", color="C2")
    series(lr_ax, "lr", "lr", color="C0")
    losses = [r[k] for r in rows for k in ("train_loss", "val_loss") if isinstance(r.get(k), (int, float))]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:  # one early spike would flatten the rest
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5, 1, 2, not 10^0
        loss_ax.yaxis.set_minor_formatter(NullFormatter())
    ticks = _epoch_ticks(epochs)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy (%)"), (lr_ax, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xticks(ticks)
        if len(epochs) < 3:  # one or two points would sit on the frame's edges
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:  # a legend only where there is more than one line to tell apart
            ax.legend(fontsize="small")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def _epoch_ticks(epochs: list[int], most: int = 12) -> list[int]:
    """Integer ticks at measured epochs only: all of them while few, else the first epoch and the measured
    multiples of a round step (1, 2, 5, 10, 20, 25, 50, ...) that gives at most `most` ticks."""
    if len(epochs) <= most:
        return list(epochs)
    span = epochs[-1] - epochs[0]
    step = next(s * 10**k for k in range(12) for s in (1, 2, 2.5, 5)
                if float(s * 10**k).is_integer() and span / (s * 10**k) < most - 1)
    ticks = [e for e in epochs if e % step == 0]
    if ticks and ticks[0] - epochs[0] > step / 2:  # the first epoch too, unless it would crowd the next
        ticks.insert(0, epochs[0])
    return ticks or [epochs[0], epochs[-1]]
