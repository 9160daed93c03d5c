"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, JAIR 2021), through cleanlab.

The predicted probabilities come from the inference layer's runner (any model file visionzoo loads): a checkpoint
whose classes are the data's gives its softmax, averaged with cross-validated probes on its embeddings (below)
where it has a last linear layer to read them from; a model whose head is not the data's (`--model NAME
--weights FILE`, e.g. ImageNet weights) gives embeddings (the input of its last linear layer), on which logistic
regression probes are fitted with 5-fold cross-validation, so every image's probabilities come from a probe that
never saw it. cleanlab's find_label_issues (prune by noise rate) picks the images whose given label the
probabilities contradict, ranked by self-confidence (the probability of the given label), least first; the list
goes on with the other images by the same score (`flagged` false), so its head is a ranking of the model's doubts.

A checkpoint trained on this very data has seen the training images' labels, wrong ones included: its
probabilities on them are in-sample, so a mislabelled image it memorised hides (a short fine-tune memorises little;
cross-validated probes do not have the problem). Multi-label data is not ranked (one line in the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..core.errors import BadImageError
from ..data.loader import DeviceNormalizer
from ..data.transforms import eval_transform, transform_encoded
from ..inference.model_spec import ModelSpec, source_label
from ..inference.runtime import Runner, load_runner
from .inputs import NO_LABEL, DataSet
from .scan import ScanResult

PROBE_FOLDS = 5


@dataclass
class ModelOutputs:
    """Per decoded image (positions pos): the model's softmax over its own classes, and embeddings where the model
    has a last linear layer to read them from."""

    pos: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray | None
    classes: list[str] | None
    label: str


class _Images(Dataset):
    """The decoded images at positions, through the model's evaluation transform; (image, k), k = -1 where the
    transform fails after all (zeros stand in, dropped by the caller)."""

    def __init__(self, data: DataSet, res: ScanResult, pos: np.ndarray, transform: Any, size: int) -> None:
        self.data, self.res, self.pos, self.transform, self.size = data, res, pos, transform, size

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        p = int(self.pos[k])
        split = self.data.splits[int(self.res.split[p])]
        try:
            return transform_encoded(self.transform, split.encoded(int(self.res.index[p]))), k
        except (BadImageError, OSError, ValueError, RuntimeError):
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1


def _last_linear(module: nn.Module | None) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)] if module is not None else []
    return linears[-1] if linears else None


def model_outputs(source: Any, data: DataSet, res: ScanResult, device: str = "auto", batch_size: int = 64,
                  workers: int = 0, progress: bool = True) -> ModelOutputs:
    """The model's probabilities (and embeddings) for every decoded image, batched on the device."""
    runner = load_runner(source, device)
    info = runner.info
    pos = np.flatnonzero(res.decoded)
    ds = _Images(data, res, pos, eval_transform(info.img_size, info.crop_pct, info.interpolation), info.img_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    head = _last_linear(runner.module)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().float().cpu())) \
        if head is not None else None
    try:
        probs, embs, kept = _run(runner, loader, captured, progress)
    finally:
        if hook is not None:
            hook.remove()
    keep = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    emb = np.concatenate(embs) if embs and head is not None else None
    return ModelOutputs(pos[keep], np.concatenate(probs) if probs else np.zeros((0, info.num_classes)), emb,
                        info.classes, source_label(source))


def _run(runner: Runner, loader: DataLoader, captured: list[torch.Tensor],
         progress: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    normalizer = DeviceNormalizer(runner.info.mean, runner.info.std, runner.device)
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    for x, k in tqdm(loader, desc="model", unit="batch", disable=None if progress else True, leave=False):
        good = k >= 0
        if not bool(good.any()):
            continue
        captured.clear()
        logits = runner(normalizer(x[good]))
        probs.append(logits.float().softmax(1).cpu().numpy())
        if captured:
            embs.append(captured[-1].reshape(int(good.sum()), -1).numpy())
        kept.append(k[good].numpy())
    return probs, embs, kept


def data_probabilities(out: ModelOutputs, classes: list[str], is_checkpoint: bool) -> tuple[np.ndarray | None, str]:
    """The model's probabilities over the data's classes (by name, or by position when the model names none of
    them and has as many), and how they were obtained; None when its head is not for these classes."""
    if not is_checkpoint or not len(out.probs):
        return None, ""
    names = out.classes or []
    if names and all(c in names for c in classes):
        cols = [names.index(c) for c in classes]
        p = out.probs[:, cols]
        return p / np.maximum(p.sum(1, keepdims=True), 1e-12), f"{out.label}'s softmax"
    if out.probs.shape[1] == len(classes) and not set(names) & set(classes):
        return out.probs, f"{out.label}'s softmax (its classes taken in the data's order: it names none of them)"
    return None, ""


def probe_probabilities(emb: np.ndarray, labels: np.ndarray, num_classes: int,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample probabilities from logistic-regression probes on L2-normalised embeddings, PROBE_FOLDS-fold
    cross-validated (fewer folds when a class is that small). Returns (rows used, probabilities over all
    classes); classes with a single image are left out (no fold could hold one back)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(labels, minlength=num_classes)
    rows = np.flatnonzero(counts[labels] >= 2)
    present = np.flatnonzero(counts >= 2)
    if len(present) < 2:
        return rows[:0], np.zeros((0, len(counts)))
    folds = int(min(PROBE_FOLDS, counts[present].min()))
    x = emb[rows] / np.maximum(np.linalg.norm(emb[rows], axis=1, keepdims=True), 1e-12)
    probe = LogisticRegression(C=10.0, max_iter=2000)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    p = cross_val_predict(probe, x, labels[rows], cv=cv, method="predict_proba")
    full = np.zeros((len(rows), len(counts)))
    full[:, present] = p
    return rows, full


def rank_suspects(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's label issues (indices into labels), least self-confident first, and every row's label quality."""
    from ..core.extras import require

    require("cleanlab", "check", "check-data's label suspects")
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(0, np.int64), np.ones(len(labels))
    # classes without an image here would make cleanlab's per-class estimates divide by zero: drop their columns
    compact = np.searchsorted(present, labels)
    p = probs[:, present]
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    quality = get_label_quality_scores(compact, p, method="self_confidence")
    issues = find_label_issues(compact, p, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    return np.asarray(issues, np.int64), quality


def label_suspects(source: Any, data: DataSet, res: ScanResult, device: str, batch_size: int, workers: int,
                   progress: bool, max_suspects: int) -> tuple[list[dict[str, Any]], str, ModelOutputs | None]:
    """The suspects as the report lists them ({file, split, given, suggested, score}, most suspect first), the
    line saying how they were found (or why not), and the model's outputs (for embedding near duplicates)."""
    if source is None:
        return [], "no model given (--checkpoint FILE, or --model NAME --weights FILE): label errors not ranked", None
    if data.multilabel:
        return [], "multi-label data: label errors not ranked (confident learning here is for one class per image)", \
            None
    out = model_outputs(source, data, res, device, batch_size, workers, progress)
    labels = res.label[out.pos]
    probs, how = data_probabilities(out, data.classes, not isinstance(source, ModelSpec))
    rows = np.flatnonzero(labels != NO_LABEL)
    if probs is None and out.embeddings is None:
        return [], f"{out.label}: no classes matching the data's and no embeddings: label errors not ranked", out
    used, probed = probe_probabilities(out.embeddings[rows], labels[rows], len(data.classes)) \
        if out.embeddings is not None else (rows[:0], np.zeros((0, len(data.classes))))
    probes = f"{PROBE_FOLDS}-fold cross-validated linear probes on {out.label}'s embeddings"
    if probs is None:
        rows, probs, how = rows[used], probed, probes
    elif len(used):
        # a checkpoint saw the training labels, wrong ones too: its softmax is averaged with the probes', which are
        # out-of-sample (measured in docs/check_data.md: steadier than either alone over training lengths)
        rows, probs, how = rows[used], (probs[rows[used]] + probed) / 2, f"{how} averaged with {probes}"
    else:
        probs = probs[rows]
    issues, quality = rank_suspects(labels[rows], probs)
    order = _ranking(issues, quality)[:max_suspects]
    flagged = set(issues.tolist())
    suspects = [_suspect(data, res, int(out.pos[rows[k]]), probs[k], float(quality[k]), k in flagged) for k in order]
    return suspects, f"confident learning (cleanlab) on {how}: {len(issues)} flagged", out


def _ranking(issues: np.ndarray, quality: np.ndarray) -> list[int]:
    """cleanlab's flagged issues in its order, then every other image by label quality, least first: a ranking
    whose head is confident learning's verdict and whose tail is the model's next doubts."""
    flagged = set(issues.tolist())
    rest = [int(k) for k in np.argsort(quality, kind="stable") if int(k) not in flagged]
    return [int(k) for k in issues] + rest


def _suspect(data: DataSet, res: ScanResult, p: int, probs: np.ndarray, score: float,
             flagged: bool) -> dict[str, Any]:
    split = data.splits[int(res.split[p])]
    given = int(res.label[p])
    return {"file": split.name_of(int(res.index[p])), "split": split.name, "given": data.classes[given],
            "suggested": data.classes[int(np.argmax(probs))], "score": round(score, 6),
            "suggested_prob": round(float(probs.max()), 6), "flagged": flagged, "pos": p}
