"""The training step and one epoch of it.

`train_one_epoch` keeps the step free of host syncs: loss and accuracy accumulate on the device
and are read once per log interval.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from ..config import spelled
from ..core.distributed import all_gather_objects, all_reduce_sum
from ..core.errors import DivergedError, skipped_names
from ..core.precision import autocast
from ..data.loader import DeviceNormalizer, device_batches
from .distill import DistillCriterion, Teacher
from .ema import WeightEMA
from .mixing import BatchMix
from .multilabel import MultilabelCriterion, precision_at_1
from .objective import Criterion
from .scope import TrainScope

SKIPPED_NAMES_KEPT = 50  # unreadable files an epoch's record names (the count is always whole)


@dataclass
class StepState:
    """What the step loop needs besides the model; kept together so functions stay short."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    normalizer: DeviceNormalizer
    precision: str
    clip_grad: float | None
    criterion: Criterion | MultilabelCriterion | DistillCriterion
    global_step: int = 0  # optimizer steps
    scope: TrainScope = field(default_factory=TrainScope)  # which modules run in training mode
    accum_steps: int = 1  # micro-batches per optimizer step
    mix: BatchMix | None = None  # mixup / cutmix on the device batch
    ema: WeightEMA | None = None
    epoch: int = 0  # 0-based, for mixup_off_epoch
    teacher: Teacher | None = None  # distillation: sees each (mixed) batch before the student's loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's no_sync (through a torch.compile wrapper too): an inner micro-batch skips the all-reduce."""
    inner = getattr(model, "_orig_mod", model)
    return inner.no_sync() if isinstance(inner, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def micro_step(model: nn.Module, state: StepState, x: torch.Tensor, target: torch.Tensor,
               last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one micro-batch (mixed if mixing is on; loss-scaled for fp16, divided by the
    accumulation steps), gradients all-reduced on the last one only; returns (loss, logits)."""
    if state.mix is not None:
        x, target = state.mix(x, target, state.epoch)
    with contextlib.nullcontext() if last else _no_sync(model):
        with autocast(state.normalizer.device, state.precision):
            if state.teacher is not None:  # the same mixed batch, in the same precision as the student
                cast(DistillCriterion, state.criterion).set_teacher(state.teacher(x))
            loss, logits = state.criterion(model(x), target)
        scaled = loss / state.accum_steps if state.accum_steps > 1 else loss
        state.scaler.scale(scaled).backward()
    return loss, logits


def apply_update(model: nn.Module, state: StepState) -> None:
    """Optional gradient clipping, the optimizer step (skipped by the scaler on overflow), the EMA."""
    if state.clip_grad:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), state.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(model)


def optimizer_step(model: nn.Module, state: StepState, x: torch.Tensor,
                   target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One whole optimizer step on one batch (no accumulation); returns (loss, logits)."""
    state.optimizer.zero_grad(set_to_none=True)
    loss, logits = micro_step(model, state, x, target, last=True)
    apply_update(model, state)
    return loss, logits


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
    on_log: Callable[[dict[str, Any]], None] | None = None,
    later_steps: int = 0,
    later_extra_s: float = 0.0,
) -> dict[str, Any]:
    """At most max_steps optimizer steps, each over state.accum_steps batches. Returns mean loss, train top-1
    (against the unmixed labels) and images/s.

    later_steps, later_extra_s: the run's steps after this epoch and its other time after it (evaluation,
    saving), for the bar's ETA of the whole run beside the epoch's."""
    state.scope.set_mode(model)
    device = state.normalizer.device
    # loss*n and correct stay on the device; image counts are host ints (no per-step copies)
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    skipped = seen = timed_images = steps = micro = 0
    lr_used = state.optimizer.param_groups[0]["lr"]
    t_start = time.perf_counter()
    t_perf = None
    # drawn (on a terminal) before the first batch is asked for: starting the loader's workers and filling
    # their queues can take a while, and the bar says so meanwhile
    bar = progress_bar(max_steps, desc, progress)
    t_log, seen_log, steps_log = t_start, 0, 0  # the last read-out, for images/s and the ETA
    # islice: no batch beyond max_steps is fetched (or, on CUDA, prefetched into the timed window)
    batches = itertools.islice(loader, max_steps * state.accum_steps)
    for x, target, n_skipped in device_batches(batches, state.normalizer):
        if seen == 0:  # the first read-out's rate starts at the first batch, not at the workers' start
            t_log = time.perf_counter()
            bar.set_postfix_str("", refresh=False)
        skipped += n_skipped
        if steps == perf_warmup_steps and micro == 0:
            sync(device)
            t_perf, timed_images = time.perf_counter(), 0
        if micro == 0:
            state.optimizer.zero_grad(set_to_none=True)
        # no empty batches here: the training set replaces undecodable images (ImageDataset.replace_bad)
        loss, logits = micro_step(model, state, x, target, last=micro == state.accum_steps - 1)
        with torch.no_grad():
            sums[0] += loss.detach() * len(target)
            sums[1] += (precision_at_1(logits, target) if target.ndim == 2 else logits.argmax(1) == target).sum()
        seen += len(target)
        timed_images += len(target)
        micro += 1
        if micro < state.accum_steps:
            continue
        micro = 0
        apply_update(model, state)
        lr_used = state.optimizer.param_groups[0]["lr"]
        state.scheduler.step()
        steps += 1
        state.global_step += 1
        bar.update(1)
        if steps % log_interval == 0 or steps == max_steps:
            loss_avg = sums[0].item() / seen  # the one host sync per interval
            if _diverged(loss_avg, device):  # stop before anything of this epoch is saved
                bar.close()
                raise DivergedError(f"the training loss is {loss_avg} at step {state.global_step} ({desc}): the run "
                                    f"diverged; lower {spelled('lr')} (now {lr_used:.4g}) or set "
                                    f"{spelled('clip_grad')}")
            if not bar.disable:  # the clock is read after the sync above, so the rate counts finished work
                now = time.perf_counter()
                rate = (seen - seen_log) * world_size / max(now - t_log, 1e-9)
                step_s = (now - t_log) / max(steps - steps_log, 1)
                eta = (max_steps - steps) * step_s
                run_eta = eta + later_steps * step_s + later_extra_s if later_steps or later_extra_s else None
                bar.set_postfix_str(progress_text(loss_avg, lr_used, rate, eta, run_eta))
                t_log, seen_log, steps_log = now, seen, steps
            if on_log:
                on_log({"step": state.global_step, "loss": loss_avg, "lr": lr_used})
    bar.close()
    sync(device)
    t_end = time.perf_counter()
    if t_perf is None:  # fewer steps than the warm-up: time them all rather than report nothing
        t_perf, timed_images = t_start, seen
    return _epoch_stats(sums, seen, skipped, steps, timed_images * world_size / max(t_end - t_perf, 1e-9),
                        t_end - t_start, lr_used)


# the bar's postfix is ours (progress_text), so the bar itself shows steps and elapsed time only
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
WAITING = "loading data, starting workers..."


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    """The epoch's bar on a terminal (stderr a TTY); disabled when not, or without progress."""
    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True,
                bar_format=BAR_FORMAT, postfix=WAITING)


def progress_text(loss: float, lr: float, images_per_sec: float, eta_s: float, run_eta_s: float | None = None) -> str:
    """The bar's read-out at a log interval, e.g. "loss 2.2874, lr 0.01307, 121 img/s, ETA 0:14, run 2:31": the
    epoch's ETA, then the run's (left out in the last epoch, where they are the same)."""
    run = f", run {format_duration(run_eta_s)}" if run_eta_s is not None else ""
    return f"loss {loss:.4f}, lr {lr:.4g}, {images_per_sec:.0f} img/s, ETA {format_duration(eta_s)}{run}"


def format_duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _diverged(loss: float, device: torch.device) -> bool:
    """Whether any rank's running loss is NaN or infinite. Every rank asks at the same steps, so all of
    them stop together (a rank alone would leave the others waiting in the next all-reduce)."""
    flag = torch.tensor([0.0 if math.isfinite(loss) else 1.0], device=device)
    return all_reduce_sum(flag).item() > 0


def _epoch_stats(sums: torch.Tensor, seen: int, skipped: int, steps: int, images_per_sec: float,
                 epoch_time: float, lr: float) -> dict[str, Any]:
    """The epoch's record, with loss, accuracy and counts summed over all ranks."""
    totals = torch.cat([sums, sums.new_tensor([seen, int(skipped)])])
    all_reduce_sum(totals)
    loss_sum, correct, count, skipped_all = totals.tolist()
    # the skipped files by name (every rank's, capped): one per skip, each rank skipping its own indices
    names = [n for rank in all_gather_objects(skipped_names(skipped)[:SKIPPED_NAMES_KEPT]) for n in rank]
    return {
        "train_loss": loss_sum / count if count else float("nan"),
        "train_top1": 100.0 * correct / count if count else 0.0,
        "steps": steps,
        "images_per_sec": images_per_sec,
        "epoch_time": epoch_time,
        "skipped_images": int(skipped_all),
        **({"skipped_files": names[:SKIPPED_NAMES_KEPT]} if names else {}),
        "lr": lr,
    }
