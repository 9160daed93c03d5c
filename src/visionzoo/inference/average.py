"""`visionzoo average`: checkpoint averaging (timm's avg_checkpoints) and greedy soups (Wortsman et al. 2022,
"Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing inference
time").

    candidates: a run folder's epoch-N.pth (`train --keep-last K`) or checkpoint files, narrowed to the last K
                (by epoch) or the best K (by the validation top-1 each one records)
    uniform:    the mean of their weights
    greedy:     the candidates sorted by their own validation top-1, best first; the soup starts as the best
                one and takes each next one only if the soup's validation top-1 does not drop

The weights averaged are the ones inference uses: a checkpoint's EMA weights where it has them. Float tensors
are averaged in float64 and cast back; other buffers (BatchNorm's num_batches_tracked) come from the newest
checkpoint. With recompute_bn=N the BatchNorm statistics of an average are reset and estimated again from N
batches of the training split, read with the evaluation transform (the centre crop at the evaluation size:
the statistics the weights meet at inference, and the same images for every soup compared), before it is
evaluated or saved. The result is a checkpoint like best.pth (the newest candidate's classes, preprocessing,
model name and config), with no training state and no separate EMA weights: its `model` is the average.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig, spelled
from ..core.distributed import DistInfo, all_reduce_sum, init_distributed
from ..core.errors import ConfigError, ModelFileError
from ..core.precision import parse_precision, resolve_precision
from ..data.loader import DeviceNormalizer, device_batches
from ..engine.evaluate import evaluate_model
from ..engine.snapshots import epoch_snapshots
from ..models.checkpoint import Checkpoint
from ..models.registry import model_cfg_of, model_name_of
from .eval_data import eval_dataset, eval_loader, loader_for, resolve_data
from .model_info import ModelInfo
from .runtime import Runner

log = logging.getLogger("visionzoo")

StateDict = dict[str, torch.Tensor]


@dataclass
class Candidate:
    """One checkpoint that may go into the average; its weights are read again when needed (not kept)."""

    path: Path
    order: int  # oldest first: the epoch where the file records one, else the order given
    epoch: int | None
    recorded_top1: float | None  # the validation top-1 of the weights averaged, as training recorded it
    weights: str  # "ema" or "raw"
    top1: float | None = None  # measured here


def average_state_dicts(dicts: Sequence[StateDict]) -> StateDict:
    """The uniform mean of state dicts with the same keys and shapes: float tensors averaged (in float64, cast
    back to their dtype), the others (integer buffers) taken from the last dict."""
    if not dicts:
        raise ValueError("nothing to average")
    total = _Sum()
    for i, sd in enumerate(dicts):
        total.add(sd, i)
    return total.mean()


class _Sum:
    """A running float64 sum of state dicts (a soup's, to which a candidate is added for a try), with the
    non-float tensors of its newest member (by order)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.keys: list[str] = []  # the first state dict's order, kept in the result
        self.others: StateDict = {}
        self.newest = -1
        self.count = 0

    def add(self, sd: StateDict, order: int) -> None:
        self.keys = self.keys or list(sd)
        for k, v in sd.items():
            if v.is_floating_point():
                self.sums[k] = self.sums[k] + v.double().cpu() if k in self.sums else v.double().cpu()
                self.dtypes.setdefault(k, v.dtype)
        if order > self.newest:
            self.others, self.newest = _non_float(sd), order
        self.count += 1

    def mean(self, extra: StateDict | None = None, extra_order: int = -1) -> StateDict:
        """The mean of the sum, with extra (a candidate of that order) added when given."""
        others = _non_float(extra) if extra is not None and extra_order > self.newest else self.others
        n = self.count + (extra is not None)
        out = {}
        for k in self.keys:
            if k in others:
                out[k] = others[k]
                continue
            total = self.sums[k] + extra[k].double().cpu() if extra is not None else self.sums[k]
            out[k] = (total / n).to(self.dtypes[k])
        return out


def _non_float(sd: StateDict) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in sd.items() if not v.is_floating_point()}


def find_candidates(sources: Sequence[str | Path]) -> list[Candidate]:
    """Each source is a run folder (its epoch-N.pth) or a checkpoint file; oldest first."""
    if not sources:
        raise ConfigError("average: give a run folder or checkpoint files")
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = [p for _, p in epoch_snapshots(source)]
            if not found:
                raise ModelFileError(f"{source}: no epoch-N.pth checkpoints in this folder (train with "
                                     "--keep-last K to keep the last K epochs')")
            paths += found
        elif source.is_file():
            paths.append(source)
        else:
            raise ModelFileError(f"checkpoint or run folder not found: {source}")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    candidates = []
    for i, path in enumerate(unique):
        ckpt = Checkpoint.load(path)
        kind = ckpt.weights_kind()
        metric = (ckpt.metrics or {}).get("val_ema_top1" if kind == "ema" else "val_top1")
        candidates.append(Candidate(_shown(path, paths), i, ckpt.epoch, metric if isinstance(metric, float | int)
                                    else None, kind))
    # files that all record their epoch are ordered by it; otherwise as given
    if all(c.epoch is not None for c in candidates):
        candidates.sort(key=lambda c: (c.epoch, c.order))
    for i, c in enumerate(candidates):
        c.order = i
    return candidates


def _shown(resolved: Path, given: list[Path]) -> Path:
    """The path as the user gave it (or as its folder listing has it), for messages and the summary."""
    return next((p for p in given if p.resolve() == resolved), resolved)


def select(candidates: list[Candidate], last: int | None = None, best: int | None = None) -> list[Candidate]:
    """The last K (newest) or the best K by recorded validation top-1, oldest first; all without either."""
    if last is not None and best is not None:
        raise ConfigError("--last and --best choose the checkpoints two ways: give one")
    for flag, k in (("--last", last), ("--best", best)):
        if k is not None and k < 1:
            raise ConfigError(f"{flag} {k}: needs at least 1 checkpoint")
    if last is not None:
        return candidates[-last:]
    if best is not None:
        rated = [c for c in candidates if c.recorded_top1 is not None]
        if not rated:
            raise ModelFileError(f"--best {best}: none of the checkpoints records a validation top-1 (epochs "
                                 "without evaluation); use --last")
        chosen = sorted(rated, key=lambda c: (-float(c.recorded_top1 or 0.0), -c.order))[:best]
        return sorted(chosen, key=lambda c: c.order)
    return list(candidates)


class _Loaded:
    """The candidates' weights, read one file at a time, checked against the first one read."""

    def __init__(self) -> None:
        self.reference: tuple[Path, Checkpoint, dict[str, tuple[torch.dtype, torch.Size]]] | None = None

    def weights(self, c: Candidate) -> StateDict:
        ckpt = Checkpoint.load(c.path)
        sd = ckpt.weights()
        shapes = {k: (v.dtype, v.shape) for k, v in sd.items()}
        if self.reference is None:
            self.reference = (c.path, ckpt, shapes)
            return sd
        ref_path, ref, ref_shapes = self.reference
        differ = (f"model {ckpt.model_name} (not {ref.model_name})" if ckpt.model_name != ref.model_name else
                  "another class list" if ckpt.classes != ref.classes else
                  f"{ckpt.weights_kind()} weights (not {ref.weights_kind()})"
                  if ckpt.weights_kind() != ref.weights_kind() else None)
        if differ:
            raise ModelFileError(f"{c.path}: {differ} against {ref_path}; only checkpoints of one model, class "
                                 "list and EMA setting average")
        if shapes != ref_shapes:
            diff = next(k for k in sorted(set(shapes) | set(ref_shapes)) if shapes.get(k) != ref_shapes.get(k))
            raise ModelFileError(f"{c.path}: its weights do not match {ref_path}'s (first at {diff!r})")
        return sd


def average(
    sources: Sequence[str | Path],
    output: str | Path,
    last: int | None = None,
    best: int | None = None,
    greedy: bool = False,
    recompute_bn: int = 0,
    data: DataConfig | str | None = None,
    batch_size: int = 128,
    device: str = "auto",
    precision: str = "fp32",
    evaluate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Average checkpoints into `output` (a visionzoo checkpoint); returns the summary `--json` writes:
    method, weights (ema/raw), the candidates (each one's recorded and measured top-1, whether it went in),
    top1 of the result, best_single, and for a greedy soup its steps.

    sources: run folders (their epoch-N.pth) and/or checkpoint files. last / best: only the last K, or the
    best K by recorded validation top-1. greedy: a greedy soup (needs evaluation). recompute_bn: BatchNorm
    statistics of the average re-estimated from this many training batches. data: the validation (and, for
    recompute_bn, training) split; None: the data the checkpoints record. evaluate: measure the inputs and the
    result on the validation split (a uniform average can skip it).
    """
    if recompute_bn < 0:
        raise ConfigError(f"--recompute-bn {recompute_bn}: a number of batches, >= 0")
    if greedy and not evaluate:
        raise ConfigError("--greedy chooses by validation top-1: it cannot run with --no-eval")
    if not Path(output).parent.is_dir():  # before the evaluations, not after them
        raise ConfigError(f"{spelled('output', str(output))}: the folder {Path(output).parent} does not exist")
    chosen = select(find_candidates(sources), last, best)
    if isinstance(data, str):
        data = DataConfig(data=data)
    loaded = _Loaded()
    newest = chosen[-1]
    newest_sd = loaded.weights(newest)  # the reference every other file is checked against
    assert loaded.reference is not None
    ref = loaded.reference[1]
    ctx = _Context.make(ref, newest.path, data, batch_size, device, precision, progress, recompute_bn, evaluate) \
        if evaluate or recompute_bn else None
    weights = newest.weights
    log.info("averaging %d checkpoint%s: %s", len(chosen), "" if len(chosen) == 1 else "s",
             "their EMA weights (the ones inference uses)" if weights == "ema" else "their weights (no EMA)")
    if evaluate and ctx is not None:
        for c in chosen:
            c.top1 = ctx.top1(newest_sd if c is newest else loaded.weights(c), f"eval {c.path.name}")
    steps: list[dict[str, Any]] = []
    top1: float | None
    if greedy:
        assert ctx is not None
        members, result_sd, top1 = _greedy(chosen, loaded, ctx, steps)
    else:
        members = chosen
        total = _Sum()
        for c in chosen:
            total.add(newest_sd if c is newest else loaded.weights(c), c.order)
        result_sd = total.mean()
        if ctx is not None and recompute_bn:
            result_sd = ctx.recompute_bn(result_sd)
        top1 = ctx.top1(result_sd, "eval average") if evaluate and ctx is not None else None
    method = "greedy" if greedy else "uniform"
    used = {c.path for c in members}
    record = {"method": method, "weights": weights, "checkpoints": [str(c.path) for c in members],
              "recompute_bn": recompute_bn, "top1": top1}
    rated = [c for c in chosen if c.top1 is not None]
    best_single = max(rated, key=lambda c: (float(c.top1 or 0.0), c.order)) if rated else None
    summary: dict[str, Any] = {
        "output": str(output), "method": method, "weights": weights, "recompute_bn": recompute_bn,
        "num_images": ctx.num_images if ctx is not None and evaluate else None,
        "candidates": [{"checkpoint": str(c.path), "epoch": c.epoch, "recorded_top1": c.recorded_top1,
                        "top1": c.top1, "used": c.path in used} for c in chosen],
        "top1": top1,
        "best_single": {"checkpoint": str(best_single.path), "top1": best_single.top1} if best_single else None,
    }
    if greedy:
        summary["steps"] = steps
    if ctx is None or ctx.dist.is_main:
        _save(ref, result_sd, record, output)
    return summary


def _greedy(chosen: list[Candidate], loaded: _Loaded, ctx: _Context,
            steps: list[dict[str, Any]]) -> tuple[list[Candidate], StateDict, float]:
    """Wortsman et al.'s greedy soup: best candidate first; each next one stays only if the soup's top-1 does not
    drop. A soup of one is that checkpoint as it is (its statistics are its own); a soup of more gets its
    BatchNorm statistics recomputed when asked."""
    ranked = sorted(chosen, key=lambda c: (-float(c.top1 or 0.0), -c.order))
    first = ranked[0]
    members = [first]
    total = _Sum()
    total.add(loaded.weights(first), first.order)
    soup_sd, soup_top1 = total.mean(), float(first.top1 or 0.0)
    steps.append({"added": str(first.path), "top1": soup_top1, "kept": True})
    for c in ranked[1:]:
        sd = loaded.weights(c)
        trial_sd = total.mean(sd, c.order)
        if ctx.bn_batches:
            trial_sd = ctx.recompute_bn(trial_sd)
        top1 = ctx.top1(trial_sd, f"soup + {c.path.name}")
        kept = top1 >= soup_top1
        steps.append({"added": str(c.path), "top1": top1, "kept": kept})
        log.info("soup + %s: top-1 %.2f (%s %.2f)", c.path, top1, "kept; was" if kept else "left out; the soup has",
                 soup_top1)
        if kept:
            members, soup_sd, soup_top1 = members + [c], trial_sd, top1
            total.add(sd, c.order)
    return sorted(members, key=lambda c: c.order), soup_sd, soup_top1


def _save(ref: Checkpoint, weights: StateDict, record: dict[str, Any], output: str | Path) -> None:
    """A checkpoint like the newest input's best.pth, holding the average as its (only) weights."""
    out = dataclasses.replace(
        ref.without_training_state(), model={k: v.detach().cpu() for k, v in weights.items()}, ema=None,
        best_top1=None,
        metrics={"val_top1": record["top1"]} if record["top1"] is not None else None,
        extra={"average": record},
    )
    out.save(output)


class _Picked(Dataset):
    """Some items of a dataset; the loader's samplers give (index, seed) pairs, which the evaluation transform
    does not need (it draws nothing at random)."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        return self.dataset[self.indices[index[0] if isinstance(index, tuple) else index]]


@dataclass
class _Context:
    """What measuring a set of weights needs: the model to load them into, the validation loader and, for
    recompute_bn, the training batches."""

    runner: Runner
    module: nn.Module
    info: ModelInfo
    dist: DistInfo
    loader: DataLoader | None  # None: nothing is evaluated (--no-eval with --recompute-bn)
    classes: list[str]
    normalizer: DeviceNormalizer
    progress: bool
    bn_loader: DataLoader | None
    bn_batches: int
    num_images: int = 0

    @classmethod
    def make(cls, ref: Checkpoint, path: Path, data: DataConfig | None, batch_size: int, device: str,
             precision: str, progress: bool, bn_batches: int, evaluate: bool = True) -> _Context:
        asked = parse_precision(precision)
        if asked == "int8":
            raise ConfigError("--precision int8 runs quantised files; average evaluates float checkpoints")
        dist = init_distributed(device)
        module = ref.build_model(path).eval().to(dist.device)
        info = ModelInfo.from_model_cfg(model_cfg_of(module), model_name_of(module), ref)
        data_cfg = resolve_data(info, data, path)
        loader: DataLoader | None = None
        classes: list[str] = []
        if evaluate:
            loader, classes, info = eval_loader(info, data_cfg, "val", batch_size, dist.rank, dist.world_size,
                                                dist.device.type == "cuda")
        runner = Runner(module, info, dist.device, "checkpoint", precision=resolve_precision(asked, dist.device),
                        module=module)
        normalizer = DeviceNormalizer(info.mean, info.std, dist.device, reuse=True)
        bn_loader = None
        if bn_batches:
            train, _, _ = eval_dataset(info, data_cfg, "train")
            # a fixed random subset: batches of every class (the split is stored class by class), the same images
            # for every soup compared
            picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
            subset = _Picked(train, picked[: bn_batches * batch_size].tolist())
            bn_loader = loader_for(subset, data_cfg, batch_size, dist.rank, dist.world_size,
                                   dist.device.type == "cuda")
        return cls(runner, module, info, dist, loader, classes, normalizer, progress and dist.is_main, bn_loader,
                   bn_batches)

    def top1(self, weights: StateDict, desc: str) -> float:
        assert self.loader is not None
        self.module.load_state_dict(weights)
        result = evaluate_model(self.runner, self.loader, self.normalizer, self.info.num_classes, "fp32",
                                self.classes, self.progress, desc)
        self.num_images = result["num_images"]
        return float(result["top1"])

    def recompute_bn(self, weights: StateDict) -> StateDict:
        """The weights with their BatchNorm statistics estimated again: a cumulative average over the training
        batches (momentum None), the rest of the model in eval mode (no dropout), averaged over the ranks."""
        assert self.bn_loader is not None
        self.module.load_state_dict(weights)
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            log.warning("--recompute-bn: %s has no BatchNorm layers; nothing to recompute", self.info.model_name)
            return weights
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for x, _, _ in device_batches(self.bn_loader, self.normalizer):
                if len(x):
                    self.runner(x)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self.module.eval()
        if self.dist.enabled:
            for m in norms:
                for buf in (m.running_mean, m.running_var):
                    if buf is not None:
                        all_reduce_sum(buf).div_(self.dist.world_size)
        # the module's own tensors: copied, as the next load_state_dict overwrites them
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


def summary_table(summary: dict[str, Any]) -> str:
    """The candidates (epoch, recorded and measured top-1, whether they went in) and the result, as text."""
    rows: Iterable[dict[str, Any]] = summary["candidates"]

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    width = max([len("checkpoint")] + [len(r["checkpoint"]) for r in rows])
    lines = [f"{'checkpoint':<{width}}  {'epoch':>5}  {'recorded':>8}  {'top-1':>6}  used"]
    for r in rows:
        lines.append(f"{r['checkpoint']:<{width}}  {r['epoch'] if r['epoch'] is not None else '-':>5}  "
                     f"{num(r['recorded_top1']):>8}  {num(r['top1']):>6}  {'yes' if r['used'] else 'no'}")
    used = sum(r["used"] for r in rows)
    what = "greedy soup" if summary["method"] == "greedy" else "uniform average"
    weights = "EMA weights" if summary["weights"] == "ema" else "raw weights"
    bn = f", BatchNorm statistics from {summary['recompute_bn']} training batches" if summary["recompute_bn"] else ""
    line = f"{what} of {used} checkpoint{'' if used == 1 else 's'} ({weights}{bn})"
    if summary["top1"] is not None:
        best = summary["best_single"]
        line += f": top-1 {summary['top1']:.2f}" + (f" (best single {best['top1']:.2f})" if best else "")
    return "\n".join([*lines, line])
