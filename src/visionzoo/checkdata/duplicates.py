"""Exact and near duplicates within and across splits, train/val leakage, and the same image under two labels.

Exact: the same decoded pixels (the scan's SHA-256 of the RGB array and its shape), whatever the bytes (a PNG and
the same pixels re-saved losslessly match; a JPEG re-encoded does not, it is a near duplicate).
Near: imagehash's phash of a 32x32 grey thumbnail (the signs of its 8x8 low-frequency DCT block against their
median: robust to re-encoding, resizing, small crops and brightness) within a Hamming distance, and the block
itself as a direction (cosine of the 63 AC coefficients) above a similarity: the bits alone cannot tell a cropped
copy of a texture from another tile of the same texture at the distances crops reach, the two together do (the
measured distances are in docs/check_data.md). Every pair's hashes are compared: the 64-bit hashes are XORed and
popcounted in row blocks with numpy, the candidates verified block by block (memory stays bounded), N^2/2 pairs at
the rate docs/check_data.md gives, fine up to a few hundred thousand images (ImageNet's 1.28M is ~8e11 pairs: a
multi-index hash or a BK-tree would find the same pairs without comparing all of them, or the same XOR-popcount
on a GPU). Near-uniform images (FLAT_STD in scan.py) are left out of the near search: their hashes are noise, and
all blank images would match one another; their exact copies are still found.
Optionally, with embeddings from a model, pairs above a cosine similarity are near duplicates too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import NO_LABEL
from .scan import ScanResult

# a pair is near when its phash bits are within PHASH_THRESHOLD and its DCT blocks are alike, the more alike the more
# bits differ: cosine >= MIN_DCT_COSINE up to 10 bits, + COSINE_PER_BIT for each bit beyond (0.95 at 20 bits). Fitted
# on tools/check_data_faults.py's photo tiles (docs/check_data.md): injected copies reach 20 bits, other tiles of the
# same photo sit at 14-22 bits with cosines up to 0.95
PHASH_THRESHOLD = 22
MIN_DCT_COSINE = 0.80
COSINE_PER_BIT = 0.015
CONFLICT_PHASH = 4  # a near pair this close under two labels is "the same image under two labels"
MAX_NEAR_PAIRS = 100_000  # reported; beyond, the closest are kept and the rest counted
BLOCK_ELEMENTS = 1 << 23  # pairs compared per numpy step: ~64 MB of uint64 at a time


@dataclass
class Pairs:
    """Pairs of positions (a < b) with their distance and how they were found."""

    a: np.ndarray
    b: np.ndarray
    distance: np.ndarray
    method: np.ndarray  # str per pair: phash | embedding

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, distance: np.ndarray, method: str) -> Pairs:
        return cls(a.astype(np.int64), b.astype(np.int64), distance.astype(np.float64), np.full(len(a), method))

    def __len__(self) -> int:
        return len(self.a)

    def keep(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.a[mask], self.b[mask], self.distance[mask], self.method[mask])


def exact_groups(res: ScanResult) -> list[np.ndarray]:
    """Positions with the same decoded pixels, groups of two or more, each sorted (train before val)."""
    pos = np.flatnonzero(res.decoded)
    keys = res.pixel[pos]
    order = np.argsort(keys, kind="stable")
    keys, pos = keys[order], pos[order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return [np.sort(g) for g in np.split(pos, cuts) if len(g) > 1]


def hamming_pairs(hashes: np.ndarray, threshold: int,
                  accept: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) for every i < j with popcount(hashes[i] ^ hashes[j]) <= threshold that accept(i, j,
    distance) keeps (a boolean mask; all without it), in row blocks that keep memory bounded (BLOCK_ELEMENTS pairs
    at a time): candidates are verified block by block, never all held at once."""
    n = len(hashes)
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.uint8),)]
    for start in range(0, n, rows):
        block = hashes[start:start + rows]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, start:])  # columns from start: only j >= i matter
        i, j = np.nonzero(dist <= threshold)
        keep = j > i
        i, j, d = i[keep], j[keep], dist[i[keep], j[keep]]
        i, j = i + start, j + start
        if accept is not None and len(i):
            mask = accept(i, j, d)
            i, j, d = i[mask], j[mask], d[mask]
        found.append((i.astype(np.int64), j.astype(np.int64), d))
    return tuple(np.concatenate(parts) for parts in zip(*found))  # type: ignore[return-value]


def near_pairs(res: ScanResult, phash_threshold: int = PHASH_THRESHOLD, min_cosine: float = MIN_DCT_COSINE,
               per_bit: float = COSINE_PER_BIT) -> Pairs:
    """Perceptual near duplicates among decoded, non-flat images, exact copies (same pixels) left out: phash
    within phash_threshold bits and DCT blocks at least min_cosine (+ per_bit for each bit beyond 10) alike."""
    pos = np.flatnonzero(res.decoded & ~res.flat)
    dct = res.dct[pos].astype(np.float32) / 127.0
    pixel = res.pixel[pos]

    def accept(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> np.ndarray:
        cosine = np.einsum("ij,ij->i", dct[i], dct[j])
        need = min_cosine + per_bit * np.maximum(0, d.astype(np.float32) - 10)
        return (cosine >= need) & (pixel[i] != pixel[j])

    i, j, d = hamming_pairs(res.phash[pos], phash_threshold, accept)
    return Pairs.of(pos[i], pos[j], d, "phash")


def embedding_pairs(emb: np.ndarray, pos: np.ndarray, res: ScanResult, min_cosine: float) -> Pairs:
    """Pairs of positions whose embeddings (rows of emb, for positions pos) have cosine >= min_cosine, exact copies
    left out; distance = 1 - cosine."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rows = max(1, BLOCK_ELEMENTS // max(len(unit), 1))
    a_all, b_all, d_all = [], [], []
    for start in range(0, len(unit), rows):
        sims = unit[start:start + rows] @ unit[start:].T
        i, j = np.nonzero(sims >= min_cosine)
        keep = j > i
        a_all.append(pos[i[keep] + start])
        b_all.append(pos[j[keep] + start])
        d_all.append(1.0 - sims[i[keep], j[keep]])
    if not a_all:
        return Pairs.of(np.zeros(0), np.zeros(0), np.zeros(0), "embedding")
    pairs = Pairs.of(np.concatenate(a_all), np.concatenate(b_all), np.concatenate(d_all), "embedding")
    return pairs.keep(res.pixel[pairs.a] != res.pixel[pairs.b])


def merge_near(phash: Pairs, embedding: Pairs) -> Pairs:
    """phash pairs, then the embedding pairs phash did not find."""
    if not len(embedding):
        return phash
    seen = set(zip(phash.a.tolist(), phash.b.tolist()))
    fresh = np.asarray([(a, b) not in seen for a, b in zip(embedding.a.tolist(), embedding.b.tolist())], bool)
    extra = embedding.keep(fresh)
    return Pairs(*(np.concatenate([getattr(phash, f), getattr(extra, f)]) for f in ("a", "b", "distance", "method")))


def duplicate_findings(res: ScanResult, groups: list[np.ndarray], near: Pairs, name: Any, split_name: Any,
                       class_name: Any) -> dict[str, Any]:
    """The report's duplicates (exact pairs, then near pairs closest first), leakage and label conflicts.
    name/split_name/class_name: position -> file name, split name, class name (or None)."""

    def entry(kind: str, a: int, b: int, distance: float, method: str) -> dict[str, Any]:
        return {"kind": kind, "files": [name(a), name(b)], "splits": [split_name(a), split_name(b)],
                "labels": [class_name(a), class_name(b)], "distance": distance, "method": method,
                "cross_split": bool(res.split[a] != res.split[b]), "pos": [int(a), int(b)]}

    exact = [entry("exact", int(g[0]), int(other), 0, "pixels") for g in groups for other in g[1:]]
    order = np.argsort(near.distance, kind="stable")
    truncated = max(0, len(order) - MAX_NEAR_PAIRS)
    close = [entry("near", int(near.a[k]), int(near.b[k]), _num(near.distance[k]), str(near.method[k]))
             for k in order[:MAX_NEAR_PAIRS]]
    pairs = exact + close
    return {"duplicates": pairs, "near_pairs_not_listed": truncated,
            "leakage": leakage(res, pairs), "label_conflicts": label_conflicts(res, groups, near, name, class_name)}


def _num(d: float) -> float | int:
    return int(d) if float(d).is_integer() else round(float(d), 4)


def leakage(res: ScanResult, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Validation images with a copy (exact or near) in training: the headline number of a split check."""
    val_split = {k for k in np.unique(res.split).tolist() if k != 0}
    leaked: dict[str, set[int]] = {"exact": set(), "near": set()}
    train_side: set[int] = set()
    for p in pairs:
        if not p["cross_split"]:
            continue
        a, b = p["pos"]
        val, train = (b, a) if res.split[b] in val_split else (a, b)
        leaked[p["kind"]].add(val)
        train_side.add(train)
    n_val = int(np.isin(res.split, list(val_split)).sum()) if val_split else 0
    both = leaked["exact"] | leaked["near"]
    return {"val_images": n_val, "val_images_with_train_copy": len(both),
            "fraction": len(both) / n_val if n_val else 0.0, "exact": len(leaked["exact"]),
            "near_only": len(leaked["near"] - leaked["exact"]), "train_images_with_val_copy": len(train_side)}


def label_conflicts(res: ScanResult, groups: list[np.ndarray], near: Pairs, name: Any,
                    class_name: Any) -> list[dict[str, Any]]:
    """Exact copies under different labels, and near pairs within CONFLICT_PHASH bits under different labels."""
    out = []
    for g in groups:
        labels = [int(res.label[p]) for p in g if res.label[p] != NO_LABEL]
        if len(set(labels)) > 1:
            out.append({"kind": "exact", "files": [name(int(p)) for p in g],
                        "labels": [class_name(int(p)) for p in g], "distance": 0})
    for a, b, d, method in zip(near.a.tolist(), near.b.tolist(), near.distance.tolist(), near.method.tolist()):
        la, lb = int(res.label[a]), int(res.label[b])
        if method == "phash" and d <= CONFLICT_PHASH and NO_LABEL not in (la, lb) and la != lb:
            out.append({"kind": "near", "files": [name(a), name(b)], "labels": [class_name(a), class_name(b)],
                        "distance": _num(d)})
    return out
