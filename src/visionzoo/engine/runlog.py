"""Run outputs on rank 0: train.log, metrics.jsonl (appended and flushed per line), summary.json,
optional TensorBoard. Other ranks get a disabled RunLog that writes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.files import atomic_path, json_safe, write_json

log = logging.getLogger("visionzoo")


class RunLog:
    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = False):
        self.out, self.enabled, self.tb = Path(out), enabled, None
        self._handler: logging.Handler | None = None
        if not enabled:
            return
        writer = _summary_writer_class() if tensorboard else None  # before anything is written
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

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: json_safe(v) for k, v in record.items()}) + "\n")

    def scalars(self, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append({"type": kind, **values})
        if self.tb is not None:
            for k, v in values.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, values["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append({"type": "epoch", **record})
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"epoch/{k}", v, record["epoch"])
            self.tb.flush()
        parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}",
                 f"train top-1 {record['train_top1']:.2f}", f"{record['images_per_sec']:.1f} img/s",
                 f"lr {record['lr']:.4g}"]
        if "val_top1" in record:
            parts += [f"val top-1 {record['val_top1']:.2f}", f"top-5 {record['val_top5']:.2f}",
                      f"val loss {record['val_loss']:.4f} ({record['val_num_images']} images)"]
        if "val_ema_top1" in record:
            parts.append(f"EMA val top-1 {record['val_ema_top1']:.2f}")
        skipped = record.get("skipped_images", 0) + record.get("val_skipped_images", 0)
        if skipped:
            parts.append(f"skipped {skipped} unreadable images")
        log.info(" | ".join(parts))

    def finish(self, summary: dict[str, Any], last_eval: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if last_eval is not None:
            write_json(self.out / "eval.json", last_eval)
        write_json(self.out / "summary.json", summary)
        log.info("results in %s (metrics.jsonl, summary.json, config.yaml, last.pth%s)",
                 self.out, ", best.pth" if (self.out / "best.pth").exists() else "")
        self.close()

    def close(self) -> None:
        """Detach train.log (and close TensorBoard); safe to call again, and after a failed run."""
        if not self.enabled or self._handler is None:
            return
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        logging.getLogger("visionzoo").removeHandler(self._handler)
        self._handler.close()
        self._handler = None


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'visionzoo[tensorboard]'") from None
    return SummaryWriter
