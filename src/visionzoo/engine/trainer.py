"""Training: `train(config)` builds a run from a TrainConfig, restores it when resuming, runs the epoch
loop and saves after every epoch.

    train -> build_run (model, data, loaders, optimizer: _build_model, _build_loaders, _build_state)
          -> _restore (--resume) or Objective.before_training (a fresh run)
          -> fit (per epoch: train_one_epoch, evaluate_model, _save_epoch) -> _finish
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import (
    SizeSchedule,
    TrainConfig,
    parse_size_schedule,
    save_yaml,
    spelled,
    to_dict,
    validate,
)
from ..config.limits import cap_workers
from ..config.sizes import scaled_batch
from ..core import __version__
from ..core.distributed import DistInfo, barrier, broadcast_object, init_distributed
from ..core.errors import BadImageError, ConfigError, DivergedError, Interrupted, ModelFileError, error_message, plural
from ..core.files import FolderLock, atomic_copy, remove_stale_temps
from ..core.precision import cpu_has_amx, resolve_channels_last, resolve_precision
from ..data.loader import DataBundle, DeviceNormalizer, build_data, dataset_size, make_loader, set_loader_epoch
from ..data.samplers import RepeatedAugSampler
from ..data.streaming import ShardStream
from ..models import Checkpoint, create_model, get_model_cfg, load_weights, model_cfg_of, model_name_of, zero_head
from ..models.registry import ModelCfg
from .distill import Distillation, DistillCriterion
from .ema import WeightEMA
from .evaluate import evaluate_model
from .mixing import BatchMix
from .multilabel import MultilabelCriterion, build_multilabel_criterion, check_single_label
from .objective import Criterion, Objective
from .optim import build_optimizer, build_scheduler, describe_lr, effective_lr, warmup_steps
from .resume import (
    gather_rng,
    load_resume,
    restore_rng,
    resume_path,
    resumed_step_settings,
)
from .runlog import RunLog
from .scope import TrainScope, apply_train_scope
from .snapshots import prune_snapshots, save_snapshot
from .step import StepState, train_one_epoch

log = logging.getLogger("visionzoo")


@dataclass
class Run:
    """One training run's parts, built once by `build_run` and used by the epoch loop."""

    cfg: TrainConfig
    dist: DistInfo
    out: Path
    runlog: RunLog
    data: DataBundle
    model: nn.Module  # the plain model: what is saved and evaluated
    objective: Objective
    scope: TrainScope
    train_loader: DataLoader
    val_loader: DataLoader
    steps_per_epoch: int
    lr: float
    state: StepState
    wrapped: nn.Module | None = None  # DDP and/or torch.compile around model: what the step calls
    start_epoch: int = 0
    best_top1: float | None = None  # the best of the selection metric (`metric`): top-1, or mAP for multi-label
    resumed_record: dict[str, Any] | None = None  # the resumed checkpoint's epoch record
    batch_asked: int | None = None  # the configured batch, where a small training set made it smaller
    saved_epochs: int = 0  # epochs last.pth holds
    overhead_s: float = 0.0  # an epoch's time besides its training steps (evaluation, saving), for the ETA
    distill: Distillation | None = None  # the teacher, with --teacher
    size_schedule: SizeSchedule | None = None  # progressive resizing: the training crop size per epoch
    train_size: int = 0  # the crop size train_loader makes
    # --batch-size-schedule: each epoch's per-rank batch and optimizer steps (None: cfg.batch_size, steps_per_epoch)
    epoch_batches: list[int] | None = None
    epoch_steps: list[int] | None = None

    def steps_in(self, epoch: int) -> int:
        return self.epoch_steps[epoch] if self.epoch_steps is not None else self.steps_per_epoch

    def batch_in(self, epoch: int) -> int:
        """The per-rank training batch of a 0-based epoch."""
        if self.epoch_batches is not None:
            return self.epoch_batches[epoch]
        return self.cfg.batch_size // self.dist.world_size

    @property
    def num_classes(self) -> int:
        return self.objective.num_classes

    @property
    def metric(self) -> str:
        """What chooses best.pth (and --early-stop's patience): validation top-1, or mAP on multi-label data."""
        return "mAP" if self.data.multilabel else "top1"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (and evaluate) as cfg says; returns a summary with the run folder and best top-1."""
    try:
        with _console_log():
            return _train(cfg)
    except BadImageError as e:
        if cfg.data.skip_bad_images:  # the flag is on and still no image could stand in: nothing to add
            raise
        raise BadImageError(f"{error_message(e)} ({spelled('skip_bad_images')} replaces unreadable images and "
                            "names them)") from None


@contextlib.contextmanager
def _console_log() -> Iterator[None]:
    """The run's progress lines on stderr when nobody set up logging (a script calling visionzoo.train): the
    CLI's basicConfig, a caller's handlers on the root or on "visionzoo" take them instead, so no line comes
    twice. Detached at the end: the caller's logging is left as it was."""
    logger = logging.getLogger("visionzoo")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler()  # sys.stderr, looked up when it writes
    handler.setFormatter(logging.Formatter("%(message)s"))
    # under torchrun only rank 0 tells the progress, as on the command line
    handler.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    validate(cfg)
    # the command line caps its flag; settings from Python or a YAML file are capped here (a fork storm otherwise)
    cfg.data.workers = cap_workers(cfg.data.workers, spelled("workers"))
    dist = init_distributed(cfg.device)
    _setup_determinism(cfg, dist)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"{spelled('batch_size', cfg.batch_size)} (global) is not divisible by {dist.world_size} "
                          "processes")
    if cfg.model.sync_bn and dist.enabled and dist.device.type == "cpu":
        raise ConfigError(f"{spelled('sync_bn')} needs GPUs: torch's SyncBatchNorm does not run on CPU processes")
    get_model_cfg(cfg.model.model)  # a bad name fails before any folder is made
    out = Path(broadcast_object(str(_output_dir(cfg))))
    cfg.output = str(out)
    made = not out.exists()
    lock = _lock_output(cfg, dist)  # held for the whole run: a second run on the folder is refused
    before = {p.name for p in out.iterdir()} if lock is not None else set()
    try:
        run = build_run(cfg, dist)
    except BaseException as e:
        if lock is not None:
            lock.release()
            _remove_setup_outputs(out, before, made)
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
            raise Interrupted("interrupted while preparing the run, before any epoch was saved", str(out)) from None
        raise
    try:
        return fit(run)
    except KeyboardInterrupt:
        # the MLflow run records how the training run ended (a no-op without --mlflow)
        run.runlog.close("KILLED")
        raise Interrupted(_resume_hint(run), str(run.out)) from None
    except BaseException:
        run.runlog.close("FAILED")
        raise
    finally:
        run.runlog.close()
        if lock is not None:
            lock.release()


# what setting up a run writes into its folder before the first epoch (RunLog, _announce, the trackers)
SETUP_OUTPUTS = ("train.log", "config.yaml", "metrics.jsonl", "tensorboard", "wandb")


def _remove_setup_outputs(out: Path, before: set[str], made: bool) -> None:
    """After a failed setup (bad data, weights that do not fit, no network): what it wrote goes, so the
    corrected command is not refused as a second run on the folder; a folder the run made goes too once that
    leaves it empty. Files that were there before (a resumed run's) stay."""
    for name in SETUP_OUTPUTS:
        path = out / name
        if name in before or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if made:
        with contextlib.suppress(OSError):  # not empty: something else was written there
            out.rmdir()


def _resume_hint(run: Run) -> str:
    """What Ctrl-C kept and the command that resumes it: the saved config.yaml holds every resolved setting
    (the batch a small data set chose included), so it continues exactly the run that was stopped."""
    config = run.out / "config.yaml"
    if spelled("resume").startswith("--"):  # on the command line
        command = f"visionzoo train --config {config} {spelled('resume', 'auto')}"
        if run.dist.enabled:
            command = f"(under the same torchrun launch) {command}"
    else:
        command = f"visionzoo.train({str(config)!r}, {spelled('resume', 'auto')})"
    where = f"in epoch {run.state.epoch + 1}/{run.cfg.epochs}"
    if run.saved_epochs:
        kept = f"{run.out / 'last.pth'} holds epoch {run.saved_epochs}"
        return f"interrupted {where}; {kept}; resume with: {command}"
    return f"interrupted {where}, before any epoch was saved; start it again with: {command}"


def _lock_output(cfg: TrainConfig, dist: DistInfo) -> FolderLock | None:
    """Rank 0 locks the run folder, checks it holds no other run and clears temp files an interrupted run
    left; every rank learns whether that failed, so all stop with the same one-line error."""
    lock, error = None, None
    if dist.is_main:
        try:
            lock = FolderLock(cfg.output or ".", what=spelled("output")).acquire()
            check_output_free(cfg)
            for tmp in remove_stale_temps(lock.folder):
                log.info("removed %s, left by an interrupted write", tmp)
        except ConfigError as e:
            if lock is not None:
                lock.release()
            lock, error = None, str(e)
    error = broadcast_object(error)
    if error:
        raise ConfigError(error)
    return lock


def build_run(cfg: TrainConfig, dist: DistInfo) -> Run:
    """Everything the epoch loop needs, restored from --resume when given (cfg is updated in place with the
    resolved precision and memory format, as the saved config records them). cfg.output is the run folder."""
    model_cfg = get_model_cfg(cfg.model.model)
    out = Path(cfg.output or ".")
    resume = resume_path(cfg, out)
    ckpt = load_resume(resume) if resume is not None else None
    runlog = RunLog(out, enabled=dist.is_main, tensorboard=cfg.tensorboard, mlflow=cfg.mlflow, wandb=cfg.wandb)
    try:
        return _build_with_log(cfg, dist, model_cfg, out, runlog, ckpt, resume)
    except BaseException as e:
        # train.log is detached (later runs in this process do not write into it) and a tracking run that
        # had started ends as failed
        runlog.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def _build_with_log(cfg: TrainConfig, dist: DistInfo, model_cfg: ModelCfg, out: Path, runlog: RunLog,
                    ckpt: Checkpoint | None, resume: Path | None) -> Run:
    _resolve_step_settings(cfg, ckpt, dist.device)
    # a terminal gets a line at once (reading the data and building the model can take a while); no
    # line when not a terminal, where the log lines say what happens
    status = tqdm(total=0, desc="preparing data and model...", bar_format="{desc}", leave=False,
                  disable=None if cfg.progress and dist.is_main else True)
    asked = cfg.batch_size
    try:
        data = _build_data(cfg, model_cfg)
        model, objective, scope = _build_model(cfg, data, dist)
        # the teacher before the loaders: a teacher of other classes is refused before any worker starts
        distill = Distillation(cfg.kd, model, data.classes, dist.device, bool(cfg.model.channels_last),
                               cfg.model.compile) if cfg.kd.teacher else None
        train_loader, val_loader, steps = _build_loaders(cfg, data, objective, dist)
        _refuse_batch_of_one(cfg, model, scope, dist)
    finally:
        status.close()
    runlog.num_classes = objective.num_classes
    lr = effective_lr(cfg.optim, cfg.batch_size * cfg.optim.accum_steps)  # the effective batch
    size_schedule = _size_schedule(cfg, _patch_size(model) or 32) if cfg.data.img_size_schedule is not None else None
    batches, epoch_steps = _batch_schedule(cfg, size_schedule, train_loader, steps, dist)
    state = _build_state(cfg, model, model_cfg, objective, scope, data, lr, steps, dist.device, distill, epoch_steps)
    run = Run(cfg, dist, out, runlog, data, model, objective, scope, train_loader, val_loader, steps, lr, state,
              batch_asked=asked if asked != cfg.batch_size else None, distill=distill, train_size=data.img_size,
              size_schedule=size_schedule, epoch_batches=batches, epoch_steps=epoch_steps)
    if ckpt is not None:
        _restore(run, ckpt, resume)
    else:
        if cfg.resume == "auto":
            log.info("%s: no %s yet, starting fresh", spelled("resume", "auto"), out / "last.pth")
            runlog.repair(0, 0, None)  # lines of an interrupted first epoch go
        objective.before_training(data, state.normalizer, cfg.batch_size // dist.world_size, dist)
    run.wrapped = _wrap(run)
    _announce(run)
    return run


def _output_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    return Path("runs") / f"{cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}"


RUN_FILES = ("config.yaml", "train.log", "metrics.jsonl", "last.pth", "best.pth", "summary.json")


def check_output_free(cfg: TrainConfig) -> None:
    """A run folder that already holds a run (any of its files) is refused unless resuming: two runs never
    mix their files."""
    out = Path(cfg.output) if cfg.output else None
    if out is not None and not cfg.resume and any(_holds(out / f) for f in RUN_FILES):
        raise ConfigError(f"{spelled('output', str(out))} already holds a run: pass {spelled('resume', 'auto')} to "
                          f"continue it, or another {spelled('output')}")


def _holds(path: Path) -> bool:
    """A run file that is there; an empty train.log (an earlier version's failed setup left one) holds nothing."""
    return path.exists() and not (path.name == "train.log" and path.stat().st_size == 0)


def _resolve_step_settings(cfg: TrainConfig, ckpt: Checkpoint | None, device: torch.device) -> None:
    """precision and channels_last for this device, recorded resolved so the saved config says what ran;
    left at auto, a resumed run keeps what it began with."""
    asked, channels_last = resumed_step_settings(cfg, ckpt)
    cfg.precision = resolve_precision(asked, device)
    cfg.model.channels_last = resolve_channels_last(channels_last, device)
    if asked == "auto" and device.type == "cpu" and cpu_has_amx():
        log.info("this CPU has AMX: %s %s usually trains faster here", spelled("precision", "bf16"),
                 spelled("channels_last"))
    if cfg.precision == "fp16" and device.type == "cpu":
        log.warning("fp16 autocast on CPU is slow and poorly supported; prefer %s there", spelled("precision", "bf16"))


def _build_data(cfg: TrainConfig, model_cfg: ModelCfg) -> DataBundle:
    """The data at the run's sizes. With a size schedule the training split starts at the final size (fit
    rebuilds its loader at each epoch's size) and an eval size of auto is resolved here, so config.yaml records
    the size evaluation used."""
    if cfg.data.dummy and cfg.iters and cfg.data.dummy_train_size < cfg.iters * cfg.batch_size:
        cfg.data.dummy_train_size = cfg.iters * cfg.batch_size  # a performance run gets all its steps
    data_cfg = cfg.data
    if data_cfg.img_size_schedule is not None:  # the final size (a ramp's step never changes it)
        data_cfg = dataclasses.replace(data_cfg, img_size=_size_schedule(cfg, 32).final)
    data = build_data(data_cfg, model_cfg, num_classes=cfg.model.num_classes, seed=cfg.seed, aug=cfg.aug)
    if cfg.data.eval_img_size == "auto":  # build_data resolved it
        cfg.data.eval_img_size = data.eval_img_size
    return data


def _size_schedule(cfg: TrainConfig, step: int) -> SizeSchedule:
    data = cfg.data
    assert data.img_size_schedule is not None
    return parse_size_schedule(data.img_size_schedule, cfg.epochs, data.size_start_epochs, data.size_end_epochs,
                               data.size_step or step, spelled("img_size_schedule"))


def _batch_schedule(cfg: TrainConfig, sizes: SizeSchedule | None, loader: DataLoader, steps: int,
                    dist: DistInfo) -> tuple[list[int] | None, list[int] | None]:
    """--batch-size-schedule auto: each epoch's per-rank batch (scaled_batch of the resolved batch at that epoch's
    size) and its optimizer steps (the loader drops the last partial batch; --iters caps them)."""
    if cfg.data.batch_size_schedule is None or sizes is None:
        return None, None
    if isinstance(loader.dataset, ShardStream) or not isinstance(loader.sampler, Sized):
        raise ConfigError(f"{spelled('batch_size_schedule')} needs a random-access training set (its steps per "
                          "epoch are planned ahead): not streamed shards")
    accum, base = cfg.optim.accum_steps, cfg.batch_size // dist.world_size
    images = len(loader.sampler)  # this rank's share of an epoch
    batches = [scaled_batch(base, sizes.at(e), sizes.largest, images // accum) for e in range(cfg.epochs)]
    epoch_steps = [(images // b) // accum for b in batches]
    if cfg.iters is not None:
        epoch_steps = [min(cfg.iters, n) for n in epoch_steps]
    return batches, epoch_steps


def _patch_size(model: nn.Module) -> int | None:
    """A ViT's patch size (timm's patch_embed), the step its input sizes need; None for a CNN."""
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return int(size[0] if isinstance(size, tuple | list) else size) if size else None


def _use_epoch_size(run: Run, epoch: int) -> None:
    """Progressive resizing: the training loader at this epoch's crop size, rebuilt when the size changes (a
    few times a run). Rebuilding reads the split again through the same Source, so every data source resizes
    the same way; the order and each image's augmentation depend on (seed, epoch, index) only, so a resumed
    run makes the same batches at the same sizes."""
    if run.size_schedule is None:
        return
    size = run.size_schedule.at(epoch)
    if size == run.train_size and run.train_loader.batch_size == run.batch_in(epoch):
        return
    cfg = run.cfg
    data_cfg = dataclasses.replace(cfg.data, img_size=size)
    bundle = build_data(data_cfg, get_model_cfg(cfg.model.model), splits=("train",), classes=run.data.classes,
                        num_classes=run.num_classes, seed=cfg.seed, aug=cfg.aug)
    sampler = None if isinstance(run.train_loader.dataset, ShardStream) else run.train_loader.sampler
    run.train_loader = _train_loader(cfg, bundle.split("train"), run.batch_in(epoch), sampler, run.dist)
    if epoch > run.start_epoch and run.dist.is_main:  # the first epoch's size is in the run's first lines
        batch = f", batch {run.batch_in(epoch) * run.dist.world_size}" if run.epoch_batches is not None else ""
        log.info("epoch %d: training crops %d px%s (was %d: %s)", epoch + 1, size, batch, run.train_size,
                 spelled("img_size_schedule"))
    run.train_size = size


def _build_model(cfg: TrainConfig, data: DataBundle, dist: DistInfo) -> tuple[nn.Module, Objective, TrainScope]:
    """The model with its initial weights, on the device, and the parts of it that train."""
    num_classes = cfg.model.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise ConfigError(f"{spelled('num_classes', num_classes)} but the data has "
                          f"{plural(data.num_classes, 'class', 'classes')}")
    model = create_model(cfg.model.model, num_classes=num_classes, pretrained=cfg.model.pretrained,
                         drop_path=cfg.model.drop_path, dropout=cfg.model.dropout)
    fresh_head = cfg.model.pretrained and num_classes != get_model_cfg(cfg.model.model).num_classes
    if cfg.model.weights:
        fresh_head = load_weights(model, cfg.model.weights, raw=cfg.model.raw_weights)
    if fresh_head and cfg.model.head_init == "zero":
        zero_head(model)
    if cfg.model.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"{spelled('grad_checkpointing')}: {model_name_of(model)} does not support it (timm's "
                              "models do: vit_*, convnext_*, efficientnet_*, timm's resnets; torchvision's do not)")
        cast(Any, model).set_grad_checkpointing(True)
    objective = Objective.for_model(cfg, model, num_classes)
    model.to(dist.device)
    if cfg.model.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.model.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        objective.model = model
    # after the SyncBatchNorm swap, so the norm layers kept in eval mode are the ones that run
    scope = apply_train_scope(model, cfg.model.train_scope)
    return model, objective, scope


# an epoch of a small training set gets at least this many optimizer steps: the batch is halved until it does
# (a recipe's warm-up and decay are per-step schedules; 1 step an epoch leaves them nothing to work with)
MIN_STEPS_PER_EPOCH = 8
# per process: BatchNorm's batch statistics are noise below a few images (2 only where 8 leaves no step at all)
MIN_ADAPTED_BATCH = 8
# per process, for min_steps: fine-tuning at batch 8 lost 7 points against 16 on 20 photos a class (noisier
# BatchNorm statistics; docs/recipes.md), so more steps never cost a batch below this
MIN_STEPS_BATCH = 16


def _build_loaders(cfg: TrainConfig, data: DataBundle, objective: Objective,
                   dist: DistInfo) -> tuple[DataLoader, DataLoader, int]:
    """Train and val loaders for this rank, and the steps per epoch. A training set too small for
    MIN_STEPS_PER_EPOCH steps an epoch (or cfg.min_steps in the whole run) of cfg.batch_size gets a smaller
    batch, written back to cfg.batch_size (so the lr rule, config.yaml and a resumed run all see the batch that
    runs; the data decides it, so a resume with the same flags resolves to the same batch)."""
    pin = dist.device.type == "cuda"
    train_set = data.split("train")
    sampler = _train_sampler(cfg, objective, train_set, dist)
    accum = cfg.optim.accum_steps
    per_epoch = MIN_STEPS_PER_EPOCH if cfg.iters is None else min(MIN_STEPS_PER_EPOCH, cfg.iters)
    # min_steps (a fine-tune recipe's) spread over the epochs: a small set trains in more, smaller steps
    wanted = max(per_epoch, -(-cfg.min_steps // cfg.epochs)) if cfg.iters is None else per_epoch
    asked = cfg.batch_size
    per_rank_batch = asked // dist.world_size

    def loader(batch: int) -> DataLoader:
        return _train_loader(cfg, train_set, batch, sampler, dist)

    while True:
        train_loader = loader(per_rank_batch)
        available = len(train_loader) // accum  # optimizer steps in one pass
        smaller = _smaller_batch(per_rank_batch)
        floor = MIN_ADAPTED_BATCH if available else 2
        if available >= per_epoch:  # only min_steps asks for more: not at any batch
            floor = max(floor, MIN_STEPS_BATCH)
        if available >= wanted or smaller < floor:
            break
        per_rank_batch = smaller
    chosen = broadcast_object(per_rank_batch)  # rank 0's choice for all (shares of a split may differ by one)
    if chosen != per_rank_batch:
        per_rank_batch, train_loader = chosen, loader(chosen)
        available = len(train_loader) // accum
    cfg.batch_size = per_rank_batch * dist.world_size
    # evaluation keeps the batch asked for: it has no statistics or schedule to care about the size
    val_loader = make_loader(data.split("val"), asked // dist.world_size, cfg.data.workers, False, cfg.seed,
                             dist.rank, dist.world_size, pin, nice=cfg.data.worker_nice)
    steps = available if cfg.iters is None else min(cfg.iters, available)
    if cfg.iters is not None and cfg.iters > available and dist.is_main:
        log.warning("%s is more than the %s of one epoch: running %s per epoch", spelled("iters", cfg.iters),
                    plural(available, "step"), plural(steps, "step"))
    if steps == 0:
        raise ConfigError(f"training set of {plural(len(cast(Sized, train_set)), 'image')} (on this rank) is smaller "
                          f"than one step of {cfg.batch_size} x {accum} ({spelled('accum_steps')})")
    return train_loader, val_loader, steps


def _train_loader(cfg: TrainConfig, train_set: Dataset, per_rank_batch: int, sampler: Any,
                  dist: DistInfo) -> DataLoader:
    return make_loader(train_set, per_rank_batch, cfg.data.workers, True, cfg.seed, dist.rank, dist.world_size,
                       dist.device.type == "cuda", sampler=sampler, nice=cfg.data.worker_nice)


def _refuse_batch_of_one(cfg: TrainConfig, model: nn.Module, scope: TrainScope, dist: DistInfo) -> None:
    """BatchNorm in training mode cannot normalise one image (torch's raw "Expected more than 1 value per
    channel" at the first step): refused before training, naming the batch. Training batches are always full
    (drop_last), so the per-process batch is the only one to check."""
    per_process = cfg.batch_size // dist.world_size
    if per_process != 1:
        return
    scope.set_mode(model)  # the modes training runs in: a frozen (cRT) or eval-mode (FixRes) norm is fine
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not norms:
        return
    where = f" ({per_process} image per process over {dist.world_size} processes)" if dist.enabled else ""
    raise ConfigError(f"{spelled('batch_size', cfg.batch_size)}{where}: {model_name_of(model)} has BatchNorm "
                      "layers, which need at least 2 images per process in training; use "
                      f"{spelled('batch_size', 2 * dist.world_size)} or more")


def _smaller_batch(batch: int) -> int:
    """The next power of two below batch (64 -> 32, 48 -> 32, 37 -> 32)."""
    return 1 << ((batch - 1).bit_length() - 1) if batch > 1 else 0


def _train_sampler(cfg: TrainConfig, objective: Objective, train_set: Dataset, dist: DistInfo):
    """The long-tail objective's class-aware sampler, repeated augmentation, or None (SeededSampler)."""
    sampler = objective.sampler(train_set, dist)
    if cfg.aug.aug_repeats > 1:
        if sampler is not None:
            raise ConfigError(f"{spelled('aug_repeats')} and {spelled('sampler')} (class-aware sampling) both choose "
                              "the images: give one")
        return RepeatedAugSampler(len(cast(Sized, train_set)), cfg.aug.aug_repeats, cfg.seed, dist.rank,
                                  dist.world_size)
    return sampler


def _build_state(cfg: TrainConfig, model: nn.Module, model_cfg: ModelCfg, objective: Objective, scope: TrainScope,
                 data: DataBundle, lr: float, steps_per_epoch: int, device: torch.device,
                 distill: Distillation | None = None, epoch_steps: list[int] | None = None) -> StepState:
    criterion: Criterion | MultilabelCriterion | DistillCriterion
    if data.multilabel:
        if distill is not None:
            raise ConfigError(f"{spelled('teacher')}: distillation is single-label; not with multi-label data")
        criterion = build_multilabel_criterion(cfg, data.train, objective.num_classes, device)
    else:
        check_single_label(cfg)
        task = objective.criterion(data.train, device)
        criterion = task if distill is None else distill.criterion(task).to(device)
    extra = criterion.extra_parameters() if isinstance(criterion, DistillCriterion) else None
    optimizer = build_optimizer(model, cfg.optim, lr, device, objective.param_groups(lr), extra)
    ema = WeightEMA(model, cfg.optim.ema_decay, cfg.optim.ema_warmup, cfg.optim.ema_every) if cfg.optim.ema else None
    return StepState(
        optimizer, build_scheduler(optimizer, cfg.sched, steps_per_epoch, cfg.epochs, epoch_steps),
        torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        DeviceNormalizer(model_cfg.mean, model_cfg.std, device, bool(cfg.model.channels_last), reuse=True),
        cfg.precision, cfg.optim.clip_grad, criterion, scope=scope,
        accum_steps=cfg.optim.accum_steps, mix=BatchMix.from_config(cfg.aug, objective.num_classes), ema=ema,
        teacher=distill.teacher if distill is not None else None,
    )


def _restore(run: Run, ckpt: Checkpoint, path: Path | None) -> None:
    """Weights, optimizer, schedule, loss scale, position and every rank's RNG from a checkpoint."""
    state = run.state
    if run.distill is not None:
        run.distill.check_resume(ckpt.extra.get("teacher"), path)
    elif ckpt.extra.get("teacher"):
        raise ConfigError(f"{spelled('resume', str(path))} was distilled from {ckpt.extra['teacher'].get('source')}: "
                          f"resume with {spelled('teacher')} (its config.yaml has it)")
    try:
        run.model.load_state_dict(ckpt.model)
        state.optimizer.load_state_dict(ckpt.optimizer or {})  # empty: refused below as not fitting
        state.scheduler.load_state_dict(ckpt.scheduler or {})
        if ckpt.scaler and state.scaler.is_enabled():  # an fp32/bf16 run saves an empty scaler state
            state.scaler.load_state_dict(ckpt.scaler)
        if state.ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"it holds no EMA weights, and this run keeps them ({spelled('ema')})")
            state.ema.load_state_dict(ckpt.ema)
        projection = _projection(state)
        if projection is not None:
            projection.load_state_dict(ckpt.extra.get("distill_projection") or {})
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{spelled('resume', str(path))}: the checkpoint does not fit this run "
                             f"({first})") from None
    run.start_epoch, run.best_top1, state.global_step = ckpt.epoch or 0, ckpt.best_top1, ckpt.step or 0
    run.saved_epochs = run.start_epoch
    run.resumed_record = ckpt.metrics
    restore_rng(ckpt, run.dist)
    # one metrics line per finished epoch: the interrupted epoch's step lines go, a missing line comes back
    run.runlog.repair(run.start_epoch, state.global_step, ckpt.metrics)
    log.info("resumed from %s at epoch %d (step %d)", path, run.start_epoch, state.global_step)


def _projection(state: StepState) -> nn.Module | None:
    """Feature distillation's trained projection, which a resume restores (None in other runs)."""
    return state.criterion.projection if isinstance(state.criterion, DistillCriterion) else None


def _distill_state(run: Run) -> dict[str, Any]:
    """The checkpoint's record of the teacher (a resume must use the same file) and the trained projection."""
    if run.distill is None:
        return {}
    out: dict[str, Any] = {"teacher": run.distill.record()}
    projection = _projection(run.state)
    if projection is not None:
        out["distill_projection"] = projection.state_dict()
    return out


def _wrap(run: Run) -> nn.Module:
    model: Any = run.model
    if run.dist.enabled:
        device = run.dist.device
        # FixRes: no per-forward broadcast of rank 0's buffers, so the re-estimated statistics average all
        # ranks' batches (_sync_buffers); every other buffer is frozen and equal on all ranks anyway
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=not run.scope.running_stats)
    if run.cfg.model.compile:
        model = torch.compile(model)
    return model


def _announce(run: Run) -> None:
    """Save the resolved config and log what is about to run (rank 0)."""
    cfg, data, dist = run.cfg, run.data, run.dist
    if not dist.is_main:
        return
    save_yaml(cfg, run.out / "config.yaml")
    run.runlog.track_config(to_dict(cfg))
    accum = cfg.optim.accum_steps  # the logged batch is the effective one, as the lr rule uses
    train_images = dataset_size(data.split("train"))
    notes = [f"{cfg.batch_size} x {accum} accumulated"] if accum > 1 else []
    if run.batch_asked is not None:  # said first: it changes the lr and the steps the recipe planned for
        was = run.batch_asked * accum if accum == 1 else f"{run.batch_asked} x {accum}"
        notes.append(f"was {was}: {plural(train_images, 'training image')}")
    log.info(
        "model %s (%s) | data: %d train / %d val images, %d px | global batch %d%s over %s, "
        "lr %s | %s x %s | device %s%s | output %s",
        cfg.model.model, plural(run.num_classes, "class", "classes") + (", multi-label" if data.multilabel else ""),
        train_images, dataset_size(data.split("val")),
        data.img_size, cfg.batch_size * accum, f" ({'; '.join(notes)})" if notes else "",
        plural(dist.world_size, "process", "processes"), describe_lr(cfg.optim, cfg.batch_size * accum),
        plural(run.steps_per_epoch, "step") + "/epoch",
        plural(cfg.epochs, "epoch"), dist.device, f", amp {cfg.precision}" if cfg.precision != "fp32" else "", run.out,
    )
    if data.multilabel:
        crit = run.state.criterion
        loss = getattr(crit, "kind", "bce") + (" with pos_weight auto" if getattr(crit, "pos_weight", None) is not None
                                               else "")
        log.info("multi-label: %s loss, sigmoid scores; best.pth by validation mAP, F1 at threshold 0.5", loss)
    if run.distill is not None:
        kd = cfg.kd
        how = {"logit": f"logit, alpha {kd.kd_alpha:g}, T {kd.kd_temperature:g}", "hard": "hard (DeiT)",
               "token": f"token ({'hard' if kd.kd_token_hard else f'T {kd.kd_temperature:g}'})",
               "feature": f"feature, alpha {kd.kd_alpha:g}"}[kd.distill]
        teacher = run.distill.teacher
        log.info("teacher %s (%s%s) | distillation: %s", run.distill.source, model_name_of(teacher.model),
                 f", {teacher.img_size} px" if teacher.img_size else "", how)
    if run.size_schedule is not None:
        log.info("training crops %s (%s); evaluation at %d px", run.size_schedule.describe(cfg.epochs),
                 spelled("img_size_schedule", cfg.data.img_size_schedule), data.eval_img_size)
    taken, asked = warmup_steps(cfg.sched, run.steps_per_epoch, cfg.epochs)
    if taken < asked:
        log.info("warm-up %s (asked for %d: a run spends at most a fifth of its %s warming up)", plural(taken, "step"),
                 asked, plural(run.steps_per_epoch * cfg.epochs, "step"))


def fit(run: Run) -> dict[str, Any]:
    """The epoch loop: train, evaluate when due, save, stop at --target-top1 or --early-stop; returns the
    summary."""
    cfg, dist = run.cfg, run.dist
    # epochs_run: this session's; epochs: the run's, resumed ones included (describe_epochs says both)
    summary: dict[str, Any] = {"output": str(run.out), "best_top1": run.best_top1, "epochs_run": 0,
                               "epochs": run.saved_epochs}
    if run.resumed_record is not None:
        summary["last"] = run.resumed_record
    if run.start_epoch:
        summary["resumed_at_epoch"] = run.start_epoch
    last_eval = None
    if cfg.keep_last and dist.is_main:  # a resumed run: snapshots of epochs it redoes (or beyond K) go now
        prune_snapshots(run.out, run.start_epoch, cfg.keep_last)
    # --early-stop counts evaluations since the best one; each epoch record (in last.pth) carries the count,
    # and the metric is reduced over all ranks, so a resumed run and every torchrun rank stop at the same epoch
    best_epoch, since_best = _patience_state(run.resumed_record)
    stopped = _early_stop(cfg, run.start_epoch, best_epoch, since_best)  # resuming a run that had stopped
    if stopped is not None:
        summary["stopped"] = stopped
    t_start = time.perf_counter()
    for epoch in range(run.start_epoch, cfg.epochs if stopped is None else run.start_epoch):
        _use_epoch_size(run, epoch)
        set_loader_epoch(run.train_loader, epoch)
        run.state.epoch = epoch
        t_epoch, left = time.perf_counter(), cfg.epochs - epoch - 1
        record, evaluation = _run_epoch(run, epoch)
        _check_finite(run, epoch, record)  # before anything of this epoch is saved or counted as best
        last_eval = evaluation or last_eval
        # with EMA the averaged weights are the ones inference uses: they choose best.pth
        key = f"val_ema_{run.metric}" if run.state.ema is not None else f"val_{run.metric}"
        improved = key in record and (run.best_top1 is None or record[key] > run.best_top1)
        if improved:
            run.best_top1 = record[key]
        if key in record:
            best_epoch, since_best = (epoch + 1, 0) if improved else (best_epoch, since_best + 1)
        record.update(best_top1=run.best_top1, best_epoch=best_epoch, evals_since_best=since_best)
        # the run's ETA at the epoch's line: this session's epochs so far, as an average
        per_epoch = (time.perf_counter() - t_start) / (epoch + 1 - run.start_epoch)
        run.runlog.run_eta_s = per_epoch * left if left else None
        _save_epoch(run, epoch, record, improved)
        run.overhead_s = max(0.0, time.perf_counter() - t_epoch - record["epoch_time"])
        summary.update(epochs_run=summary["epochs_run"] + 1, epochs=run.saved_epochs, last=record,
                       best_top1=run.best_top1)
        if cfg.target_top1 is not None and run.best_top1 is not None and run.best_top1 >= cfg.target_top1:
            log.info("target top-1 %.2f reached (%.2f) after epoch %d: stopping", cfg.target_top1, run.best_top1,
                     epoch + 1)
            summary["target_reached"] = True
            break
        stopped = _early_stop(cfg, epoch + 1, best_epoch, since_best)
        if stopped is not None:
            summary["stopped"] = stopped
            break
    if last_eval is None and run.start_epoch >= cfg.epochs and _should_eval(cfg, cfg.epochs):
        # resumed after the last epoch was saved (a kill while finishing): its evaluation again, for eval.json
        last_eval = evaluate_model(run.model, run.val_loader, run.state.normalizer, run.num_classes, cfg.precision,
                                   run.data.classes, False, "eval", multilabel=run.data.multilabel)
    if cfg.tta and last_eval is not None:  # every rank: the evaluation is reduced over all of them
        _add_tta(run, summary, last_eval)
    if dist.is_main:
        _finish(run, summary, last_eval)
    return summary


def _patience_state(record: dict[str, Any] | None) -> tuple[int | None, int]:
    """The best epoch and the evaluations since it, as of a resumed checkpoint's epoch record (None, 0 for a
    fresh run, or a checkpoint written before the record kept them: counting starts at the resume)."""
    record = record or {}
    best, since = record.get("best_epoch"), record.get("evals_since_best")
    return (best if isinstance(best, int) else None), (since if isinstance(since, int) else 0)


def _early_stop(cfg: TrainConfig, epoch: int, best_epoch: int | None, since_best: int) -> dict[str, Any] | None:
    """--early-stop P: the stop record once P evaluations in a row brought no better best metric, while epochs
    remain (a run that ends anyway after this epoch finished, it did not stop); None otherwise."""
    if not cfg.early_stop or since_best < cfg.early_stop or epoch >= cfg.epochs:
        return None
    log.info("early stop after epoch %d/%d: no better validation top-1 in %s (the best: epoch %s)", epoch,
             cfg.epochs, plural(since_best, "evaluation"), best_epoch)
    return {"reason": "early_stop", "epoch": epoch, "best_epoch": best_epoch, "patience": cfg.early_stop}


def _run_epoch(run: Run, epoch: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train one epoch and evaluate if due: the epoch's record and the evaluation (or None)."""
    cfg, dist = run.cfg, run.dist
    # what the run has left after this epoch's steps, for the bar's run ETA (none in the last epoch)
    left = cfg.epochs - epoch - 1
    later_steps = sum(run.steps_in(e) for e in range(epoch + 1, cfg.epochs))
    later_extra_s = (left + 1) * run.overhead_s if left else 0.0
    progress = cfg.progress and dist.is_main
    stepped = run.model if run.wrapped is None else run.wrapped
    stats = train_one_epoch(
        stepped, run.train_loader, run.state, run.steps_in(epoch), dist.world_size, cfg.log_interval,
        cfg.perf_warmup_steps, progress, f"epoch {epoch + 1}/{cfg.epochs}",
        on_log=lambda d: run.runlog.scalars("train_step", d), later_steps=later_steps, later_extra_s=later_extra_s,
    )
    record: dict[str, Any] = {"epoch": epoch + 1, "step": run.state.global_step, **stats}
    if run.size_schedule is not None:
        record["img_size"] = run.train_size
    if dist.enabled:
        _sync_buffers(run.model, run.scope.running_stats)
    if not _should_eval(cfg, epoch + 1):
        return record, None
    evaluation = evaluate_model(run.model, run.val_loader, run.state.normalizer, run.num_classes, cfg.precision,
                                run.data.classes, progress, f"eval {epoch + 1}", multilabel=run.data.multilabel)
    record.update({f"val_{k}": v for k, v in evaluation.items() if k != "per_class"})
    ema = run.state.ema
    if ema is not None:  # the averaged weights beside the raw ones; eval.json describes what inference uses
        if dist.enabled:
            _sync_buffers(ema.module, [])  # rank 0's averaged statistics on every rank, as saved
        evaluation = evaluate_model(ema.module, run.val_loader, run.state.normalizer, run.num_classes,
                                    cfg.precision, run.data.classes, progress, f"eval EMA {epoch + 1}",
                                    multilabel=run.data.multilabel)
        record.update({f"val_ema_{k}": v for k, v in evaluation.items() if k != "per_class"})
        evaluation["weights"] = "ema"
    return record, evaluation


def _should_eval(cfg: TrainConfig, epoch: int) -> bool:
    """epoch is 1-based; the last epoch is always evaluated when evaluation is on."""
    if cfg.eval_every <= 0 or epoch < cfg.eval_start:
        return False
    return (epoch - cfg.eval_start) % cfg.eval_every == 0 or epoch == cfg.epochs


def _check_finite(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """The training loss is checked at log steps only: an update after the last check (--lr 1e300 --iters 1)
    can still leave NaN/inf weights. So the weights (and the EMA's) are checked once per epoch, in one host
    sync, with the val losses; a DivergedError keeps this epoch's best.pth/last.pth from being written."""
    tensors = [t.detach() for m in ([run.model] + ([run.state.ema.module] if run.state.ema is not None else []))
               for t in (*m.parameters(), *m.buffers()) if t.is_floating_point() and t.numel()]
    bad = []
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        bad.append("the weights")
    for key, what in (("val_loss", "the val loss"), ("val_ema_loss", "the EMA's val loss")):
        value = record.get(key)
        if isinstance(value, float) and not math.isfinite(value) and record.get(key.replace("loss", "num_images")):
            bad.append(f"{what} ({value})")
    if not bad:
        return
    lr = run.state.optimizer.param_groups[0]["lr"]
    raise DivergedError(f"{' and '.join(bad)} turned NaN or infinite in epoch {epoch + 1}/{run.cfg.epochs}: the run "
                        f"diverged and this epoch was not saved; lower {spelled('lr')} (now {lr:.4g}) or set "
                        f"{spelled('clip_grad')}")


def _save_epoch(run: Run, epoch: int, record: dict[str, Any], improved: bool) -> None:
    """best.pth (when top-1 improved) and last.pth, then the epoch's metrics line, on rank 0.

    best.pth holds what inference needs (weights, EMA weights, classes, preprocessing, config), last.pth
    also what resuming needs (optimizer, scheduler, loss scale, RNG): for resnet18 with SGD momentum that is
    45 MB against 90 MB. best.pth is written before last.pth records the new best: a kill in between
    resumes from the previous epoch, which runs again; the metrics line comes last, and resuming restores
    it from last.pth.

    With --keep-last K the epoch's inference checkpoint is kept as epoch-N.pth (a hard link to best.pth when
    they are the same) before last.pth, pruned to the last K epochs: a kill before last.pth reruns the epoch,
    which writes the same file again, and a resumed run's first save removes files of epochs it redoes.
    """
    rngs = gather_rng(run.dist)
    if run.dist.is_main:
        state = run.state
        ckpt = Checkpoint(
            model=run.model.state_dict(), ema=state.ema.state_dict() if state.ema is not None else None,
            optimizer=state.optimizer.state_dict(),
            scheduler=state.scheduler.state_dict(), scaler=state.scaler.state_dict(),
            epoch=epoch + 1, step=state.global_step, best_top1=run.best_top1, rng=rngs,
            config=to_dict(run.cfg), metrics=dict(record), **checkpoint_meta(run.model, run.data),
            extra=_distill_state(run),
        )
        if improved:
            ckpt.without_training_state().save(run.out / "best.pth")
        if run.cfg.keep_last:
            save_snapshot(ckpt.without_training_state(), run.out, epoch + 1, run.cfg.keep_last,
                          same_as=run.out / "best.pth" if improved else None)
        ckpt.save(run.out / "last.pth")
        run.runlog.epoch(record)
    run.saved_epochs = epoch + 1
    barrier()


def checkpoint_meta(model: nn.Module, data: DataBundle) -> dict[str, Any]:
    """What eval/predict need to rebuild the model and its preprocessing from a checkpoint alone."""
    return {
        "model_name": model_name_of(model),
        "num_classes": model_cfg_of(model).num_classes,
        "classes": data.classes,
        "img_size": data.eval_img_size,  # what eval and predict use: the evaluation size
        "crop_pct": data.crop_pct,
        "interpolation": data.interpolation,
        "visionzoo_version": __version__,
        **({"task": "multilabel"} if data.multilabel else {}),
    }


def _add_tta(run: Run, summary: dict[str, Any], last_eval: dict[str, Any]) -> None:
    """--tta: the end-of-run evaluation's weights (EMA's with ema) evaluated again with the views averaged
    (engine.tta); its numbers go beside the plain ones, as "tta" in eval.json and summary.json. One extra pass
    at the end rather than in the last epoch: early stop and --target-top1 end a run at an epoch not known ahead."""
    model = run.state.ema.module if last_eval.get("weights") == "ema" and run.state.ema is not None else run.model
    cfg = run.cfg
    tta = evaluate_model(model, run.val_loader, run.state.normalizer, run.num_classes, cfg.precision,
                         run.data.classes, cfg.progress and run.dist.is_main, f"eval TTA {cfg.tta}", tta=cfg.tta)["tta"]
    last_eval["tta"] = tta
    summary["tta"] = {**tta, "plain_top1": last_eval["top1"]}  # the summary has no plain end-of-run number else
    log.info("end-of-run evaluation: top-1 %.2f, with TTA %s (%d views) %.2f", last_eval["top1"], tta["mode"],
             tta["views"], tta["top1"])


def _finish(run: Run, summary: dict[str, Any], last_eval: dict[str, Any] | None) -> None:
    out = run.out
    # the OLTR seed's name for the weights at the end of a stage (--init-from runs/s1/final_model_checkpoint.pth):
    # a hard link to last.pth, no bytes on disk (a copy only where the file system has no links)
    if (out / "last.pth").exists():
        atomic_copy(out / "last.pth", out / "final_model_checkpoint.pth")
    summary["checkpoint"] = str(out / ("best.pth" if (out / "best.pth").exists() else "last.pth"))
    if run.data.multilabel:  # the best of the selection metric is the best mAP
        summary["best_mAP"] = summary.pop("best_top1")
    run.runlog.finish(summary, last_eval)


def _setup_determinism(cfg: TrainConfig, dist: DistInfo) -> None:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _sync_buffers(model: nn.Module, averaged: list[nn.Module]) -> None:
    """Give every rank the same BatchNorm statistics, so evaluation and the saved weights agree.

    DDP broadcasts buffers at the start of each forward, so after the last step they differ per rank:
    rank 0's are taken. The running statistics of `averaged` norm layers (FixRes, trained without that
    broadcast) are averaged over the ranks instead.
    """
    mean_of = {id(b) for m in averaged for b in (m.running_mean, m.running_var)}
    world = tdist.get_world_size()
    for b in model.buffers():
        if id(b) in mean_of:
            tdist.all_reduce(b)
            b.div_(world)
        else:
            tdist.broadcast(b, 0)
