"""Training: `train(config)` builds everything from a TrainConfig and runs the epoch loop.

`train_one_epoch` keeps the step free of host syncs: loss and accuracy accumulate on the device
and are read once per log interval.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..config import (
    ConfigError,
    LongTailConfig,
    TrainConfig,
    save_yaml,
    to_dict,
    validate,
)
from ..data.loader import DataBundle, DeviceNormalizer, build_data, device_batches, make_loader
from ..models import (
    create_model,
    get_model_cfg,
    load_state_dict_file,
    load_weights,
    model_cfg_of,
    reset_classifier,
    strip_prefixes,
    unwrap_model,
)
from ..models.oltr import OLTRResNet
from .checkpoint import (
    atomic_copy,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .defaults import step_defaults
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
)
from .evaluate import autocast, evaluate_model
from .longtail import (
    Criterion,
    build_criterion,
    build_sampler,
    init_centroids,
)
from .longtail import param_groups as lt_param_groups
from .optim import build_optimizer, build_scheduler, effective_lr
from .runlog import RunLog
from .scope import TrainScope, apply_train_scope

log = logging.getLogger("visionzoo")


@dataclass
class StepState:
    """What the step loop needs besides the model; kept together so functions stay short."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    normalizer: DeviceNormalizer
    amp: str | None
    clip_grad: float | None
    criterion: Criterion
    global_step: int = 0
    scope: TrainScope = field(default_factory=TrainScope)  # which modules run in training mode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(
    model: nn.Module,
    loader,
    state: StepState,
    max_steps: int,
    world_size: int = 1,
    log_interval: int = 20,
    perf_warmup_steps: int = 5,
    progress: bool = False,
    desc: str = "train",
    on_log=None,
) -> dict[str, Any]:
    """One pass over at most max_steps batches. Returns mean loss, train top-1 and images/s."""
    state.scope.set_mode(model)
    device = state.normalizer.device
    # loss*n and correct stay on the device; image counts are host ints (no per-step copies)
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    skipped = seen = timed_images = steps = 0
    lr_used = state.optimizer.param_groups[0]["lr"]
    t_start = time.perf_counter()
    t_perf = None
    bar = tqdm(total=max_steps, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)
    # islice: no batch beyond max_steps is fetched (or, on CUDA, prefetched into the timed window)
    for x, target, n_skipped in device_batches(itertools.islice(loader, max_steps), state.normalizer):
        skipped += n_skipped
        if steps == perf_warmup_steps:
            _sync(device)
            t_perf, timed_images = time.perf_counter(), 0
        # no empty batches here: the training set replaces undecodable images (ImageDataset.replace_bad)
        with autocast(device, state.amp):
            loss, logits = state.criterion(model(x), target)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if state.clip_grad:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), state.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        lr_used = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        with torch.no_grad():
            sums[0] += loss.detach() * len(target)
            sums[1] += (logits.argmax(1) == target).sum()
        steps += 1
        state.global_step += 1
        seen += len(target)
        timed_images += len(target)
        bar.update(1)
        if steps % log_interval == 0 or steps == max_steps:
            loss_avg = sums[0].item() / seen  # the one host sync per interval
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr_used:.4g}")
            if on_log:
                on_log({"step": state.global_step, "loss": loss_avg, "lr": lr_used})
    bar.close()
    _sync(device)
    t_end = time.perf_counter()
    if t_perf is None:  # fewer steps than the warm-up: time them all rather than report nothing
        t_perf, timed_images = t_start, seen
    totals = torch.cat([sums, sums.new_tensor([seen, skipped])])
    all_reduce_sum(totals)
    loss_sum, correct, count, skipped = totals.tolist()
    elapsed = max(t_end - t_perf, 1e-9)
    return {
        "train_loss": loss_sum / count if count else float("nan"),
        "train_top1": 100.0 * correct / count if count else 0.0,
        "steps": steps,
        "images_per_sec": timed_images * world_size / elapsed,
        "epoch_time": t_end - t_start,
        "skipped_images": int(skipped),
        "lr": lr_used,
    }


def _output_dir(cfg: TrainConfig) -> Path:
    if cfg.output:
        return Path(cfg.output)
    return Path("runs") / f"{cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_output_free(cfg: TrainConfig) -> None:
    """A run folder that already holds a run is refused unless resuming (two runs never mix logs)."""
    out = Path(cfg.output) if cfg.output else None
    if out is not None and not cfg.resume and any((out / f).exists() for f in ("last.pth", "metrics.jsonl")):
        raise ConfigError(f"{out} already holds a run: pass --resume auto to continue it, or another --output")


def _resume_path(cfg: TrainConfig, out: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = out / "last.pth"
        return p if p.is_file() else None
    return Path(cfg.resume)


def _resumed_step_settings(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> tuple[str | None, bool | None]:
    """amp and channels_last as asked, with "auto" / None taken from the resumed checkpoint's config."""
    amp, channels_last = cfg.amp, cfg.model.channels_last
    saved = (ckpt or {}).get("config") or {}
    if amp == "auto" and "amp" in saved:
        amp = saved["amp"]
    if channels_last is None and "channels_last" in saved.get("model", {}):
        channels_last = saved["model"]["channels_last"]
    return amp, channels_last


def _should_eval(cfg: TrainConfig, epoch: int) -> bool:
    """epoch is 1-based; the last epoch is always evaluated when evaluation is on."""
    if cfg.eval_every <= 0 or epoch < cfg.eval_start:
        return False
    return (epoch - cfg.eval_start) % cfg.eval_every == 0 or epoch == cfg.epochs


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


def checkpoint_meta(model: nn.Module, data: DataBundle) -> dict[str, Any]:
    """What eval/predict need to rebuild the model and its preprocessing from a checkpoint alone."""
    raw = unwrap_model(model)
    return {
        "model_name": raw.visionzoo_name,
        "num_classes": raw.visionzoo_cfg.num_classes,
        "classes": data.classes,
        "img_size": data.img_size,
        "crop_pct": data.crop_pct,
        "interpolation": data.interpolation,
        "visionzoo_version": __version__,
    }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (and evaluate) as cfg says; returns a summary with the run folder and best top-1."""
    validate(cfg)
    if cfg.model.train_scope != "all" and not (cfg.model.weights or cfg.model.pretrained or cfg.resume):
        raise ConfigError(f"--train-scope {cfg.model.train_scope} fine-tunes a trained model: pass --init-from CKPT")
    dist = init_distributed(cfg.device)
    device = dist.device
    _setup_determinism(cfg, dist)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by {dist.world_size} processes")
    if cfg.model.sync_bn and dist.enabled and device.type == "cpu":
        raise ConfigError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on CPU processes")
    model_cfg = get_model_cfg(cfg.model.model)  # a bad name fails before any folder is made
    out = Path(broadcast_object(str(_output_dir(cfg))))
    cfg.output = str(out)
    check_output_free(cfg)
    runlog = RunLog(out, enabled=dist.is_main, tensorboard=cfg.tensorboard)
    resume = _resume_path(cfg, out)
    ckpt = load_checkpoint(resume) if resume is not None else None
    # recorded resolved, so the saved config says what ran; left at auto, a resumed run keeps what it began with
    cfg.amp, cfg.model.channels_last = step_defaults(*_resumed_step_settings(cfg, ckpt), device)
    if cfg.amp == "fp16" and device.type == "cpu":
        log.warning("fp16 autocast on CPU is slow and poorly supported; prefer --amp bf16 there")

    if cfg.data.dummy and cfg.iters and cfg.data.dummy_train_size < cfg.iters * cfg.batch_size:
        cfg.data.dummy_train_size = cfg.iters * cfg.batch_size  # a performance run gets all its steps
    data = build_data(cfg.data, model_cfg, num_classes=cfg.model.num_classes, seed=cfg.seed)
    num_classes = cfg.model.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise ConfigError(f"--num-classes {num_classes} but the data has {data.num_classes} classes")
    raw_model = create_model(cfg.model.model, num_classes=num_classes, pretrained=cfg.model.pretrained)
    if cfg.model.weights:
        if isinstance(raw_model, OLTRResNet):  # stage 2 from a stage-1 checkpoint
            fresh = raw_model.load_stage1(strip_prefixes(load_state_dict_file(cfg.model.weights)))
            log.info("OLTR stage 2: backbone from %s; new: %s", cfg.model.weights,
                     sorted({k.split(".")[0] for k in fresh}))
        else:
            load_weights(raw_model, cfg.model.weights)
    if cfg.lt.reset_classifier:
        if isinstance(raw_model, OLTRResNet):
            raise ConfigError("--reset-classifier is for plain models (cRT); OLTR's classifier starts fresh anyway")
        reset_classifier(raw_model, model_cfg_of(raw_model), num_classes)
    lt_defaults = LongTailConfig()
    if not isinstance(raw_model, OLTRResNet) and (cfg.lt.centroid_weight, cfg.lt.centroid_lr_factor) != (
            lt_defaults.centroid_weight, lt_defaults.centroid_lr_factor):
        raise ConfigError("--centroid-weight / --centroid-lr-factor apply to OLTR models (oltr_*) only")
    raw_model.to(device)
    if cfg.model.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    if cfg.model.sync_bn and dist.enabled:
        raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    # after the SyncBatchNorm swap, so the norm layers kept in eval mode are the ones that run
    scope = apply_train_scope(raw_model, cfg.model.train_scope)

    per_rank_batch = cfg.batch_size // dist.world_size
    pin = device.type == "cuda"
    train_loader = make_loader(data.train, per_rank_batch, cfg.data.workers, True, cfg.seed, dist.rank, dist.world_size, pin,
                               sampler=build_sampler(cfg, data.train, dist), nice=cfg.data.worker_nice)
    val_loader = make_loader(data.val, per_rank_batch, cfg.data.workers, False, cfg.seed, dist.rank, dist.world_size, pin,
                             nice=cfg.data.worker_nice)
    steps_per_epoch = len(train_loader) if cfg.iters is None else min(cfg.iters, len(train_loader))
    if cfg.iters is not None and cfg.iters > len(train_loader) and dist.is_main:
        log.warning("--iters %d is more than the %d batches of one epoch: running %d steps per epoch",
                    cfg.iters, len(train_loader), steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(f"training set of {len(data.train)} images is smaller than one batch of {cfg.batch_size}")
    lr = effective_lr(cfg.optim, cfg.batch_size)
    groups = None
    if cfg.lt.head_lr_factor != 1 or isinstance(raw_model, OLTRResNet):
        groups = lt_param_groups(raw_model, cfg.lt, lr, cfg.optim.weight_decay, cfg.optim.no_decay_norm_bias)
    optimizer = build_optimizer(raw_model, cfg.optim, lr, device, groups)
    scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch, cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    start_epoch, best_top1 = 0, None
    state = StepState(
        optimizer, scheduler, scaler,
        DeviceNormalizer(model_cfg.mean, model_cfg.std, device, cfg.model.channels_last, reuse=True),
        cfg.amp, cfg.optim.clip_grad, build_criterion(cfg, raw_model, data.train, num_classes, device),
        scope=scope,
    )
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] and scaler.is_enabled():  # an fp32/bf16 run saves an empty scaler state
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_top1, state.global_step = ckpt["epoch"], ckpt.get("best_top1"), ckpt["step"]
        set_rng_state(ckpt["rng"][min(dist.rank, len(ckpt["rng"]) - 1)])
        ckpt = None  # restored: do not hold a second copy of the weights and optimizer state for the run
        log.info("resumed from %s at epoch %d (step %d)", resume, start_epoch, state.global_step)
    elif cfg.resume == "auto":
        log.info("--resume auto: no %s yet, starting fresh", out / "last.pth")
    if resume is None and isinstance(raw_model, OLTRResNet):
        init_centroids(raw_model, data.train, data.img_size, data.crop_pct, data.interpolation, state.normalizer,
                       per_rank_batch, cfg.data.workers, dist)

    model = raw_model
    if dist.enabled:
        # FixRes: no per-forward broadcast of rank 0's buffers, so the re-estimated statistics average all
        # ranks' batches (_sync_buffers); every other buffer is frozen and equal on all ranks anyway
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=not scope.running_stats)
    if cfg.model.compile:
        model = torch.compile(model)

    if dist.is_main:
        save_yaml(cfg, out / "config.yaml")
        log.info(
            "model %s (%d classes) | data: %d train / %d val images, %d px | global batch %d over %d process(es), "
            "lr %.4g | %d steps/epoch x %d epochs | device %s%s | output %s",
            cfg.model.model, num_classes, len(data.train), len(data.val), data.img_size, cfg.batch_size,
            dist.world_size, lr, steps_per_epoch, cfg.epochs, device, f", amp {cfg.amp}" if cfg.amp else "", out,
        )
    meta = checkpoint_meta(raw_model, data)
    summary: dict[str, Any] = {"output": str(out), "best_top1": best_top1, "epochs_run": 0}
    last_eval = None
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model, train_loader, state, steps_per_epoch, dist.world_size, cfg.log_interval,
            cfg.perf_warmup_steps, cfg.progress and dist.is_main, f"epoch {epoch + 1}/{cfg.epochs}",
            on_log=lambda d: runlog.scalars("train_step", d),
        )
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step, **stats}
        if dist.enabled:
            _sync_buffers(raw_model, scope.running_stats)
        if _should_eval(cfg, epoch + 1):
            last_eval = evaluate_model(
                raw_model, val_loader, state.normalizer, num_classes, cfg.amp, data.classes,
                cfg.progress and dist.is_main, f"eval {epoch + 1}",
            )
            record.update({f"val_{k}": v for k, v in last_eval.items() if k != "per_class"})
        improved = "val_top1" in record and (best_top1 is None or record["val_top1"] > best_top1)
        if improved:
            best_top1 = record["val_top1"]
        record["best_top1"] = best_top1
        rngs = _gather_rng(dist)
        if dist.is_main:
            ckpt = {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "step": state.global_step, "best_top1": best_top1,
                "rng": rngs, "config": to_dict(cfg), "metrics": dict(record), **meta,
            }
            atomic_save(ckpt, out / "last.pth")
            if improved:
                atomic_copy(out / "last.pth", out / "best.pth")
            runlog.epoch(record)
        barrier()
        summary.update(epochs_run=summary["epochs_run"] + 1, last=record, best_top1=best_top1)
        if cfg.target_top1 is not None and best_top1 is not None and best_top1 >= cfg.target_top1:
            log.info("target top-1 %.2f reached (%.2f) after epoch %d: stopping", cfg.target_top1, best_top1, epoch + 1)
            summary["target_reached"] = True
            break
    if dist.is_main:
        if (out / "last.pth").exists():  # the OLTR seed's name for the weights at the end of a stage
            atomic_copy(out / "last.pth", out / "final_model_checkpoint.pth")
        summary["checkpoint"] = str(out / ("best.pth" if (out / "best.pth").exists() else "last.pth"))
        runlog.finish(summary, last_eval)
    return summary


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


def _gather_rng(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state, so each rank resumes its own stream."""
    state = rng_state()
    if not dist.enabled:
        return [state]
    states: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return states

