"""Class-aware samplers for long-tailed training, seeded and sharded like SeededSampler.

- class_balanced: draw a class uniformly, then an image of it (every class equally often).
- sqrt: draw a class with probability proportional to sqrt(its size) (Mahajan et al. 2018).
- class_aware: OLTR's sampler (Shen et al. 2016): go through the classes in a shuffled order and
  take `samples_per_class` images of each, cycling through each class's own shuffled list.

An epoch draws as many images as the data set has. Indices come as (index, seed) pairs like
SeededSampler's, so augmentation stays a function of (seed, epoch, position) alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MODES = ("class_balanced", "sqrt", "class_aware")


def order_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that draws an epoch's order (every sampler, and the streamed shards' order)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of position or pack index `index` in an epoch: a function of these alone, so
    augmentation does not depend on workers, ranks or resuming."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**62)


class ClassSampler(Sampler):
    def __init__(self, labels: Sequence[int], mode: str, samples_per_class: int = 4, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if mode not in MODES:
            raise ValueError(f"unknown sampler {mode!r}; choose from {', '.join(MODES)}")
        self.mode, self.samples_per_class, self.seed = mode, samples_per_class, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        labels_t = torch.as_tensor(list(labels))
        self.by_class = [torch.nonzero(labels_t == c).flatten() for c in range(int(labels_t.max()) + 1)]
        self.by_class = [idx for idx in self.by_class if len(idx)]
        self.size = len(labels_t)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_indices(self, g: torch.Generator) -> list[int]:
        n, classes = self.size, self.by_class
        if self.mode == "class_aware":
            out: list[int] = []
            pools = [c[torch.randperm(len(c), generator=g)] for c in classes]
            pos = [0] * len(classes)
            while len(out) < n:
                for k in torch.randperm(len(classes), generator=g).tolist():
                    for _ in range(self.samples_per_class):
                        if pos[k] == len(pools[k]):  # a class ran out: reshuffle it and go on
                            pools[k], pos[k] = classes[k][torch.randperm(len(classes[k]), generator=g)], 0
                        out.append(int(pools[k][pos[k]]))
                        pos[k] += 1
            return out[:n]
        sizes = torch.tensor([len(c) for c in classes], dtype=torch.float64)
        weights = torch.ones_like(sizes) if self.mode == "class_balanced" else sizes.sqrt()
        picked = torch.multinomial(weights, n, replacement=True, generator=g)
        within = (torch.rand(n, generator=g, dtype=torch.float64) * sizes[picked]).long()
        return [int(classes[c][i]) for c, i in zip(picked.tolist(), within.tolist())]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx = self._global_indices(order_generator(self.seed, self.epoch))
        total = math.ceil(len(idx) / self.world_size) * self.world_size
        idx = (idx * 2)[:total]  # pad so every rank steps equally often
        for pos in range(self.rank, total, self.world_size):
            yield idx[pos], sample_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


class RepeatedAugSampler(Sampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT, torchvision's V2 recipe), as timm's RepeatAugSampler
    draws it: each image `repeats` times per epoch, the copies next to each other in one shuffled order that
    is dealt round-robin to the ranks, so a batch's copies of one image land on different ranks. An epoch
    keeps the usual length per rank (a multiple of `selected_round` images over all ranks), so it shows
    each image about once overall, in `repeats` different augmentations.

    Indices come as (index, seed) pairs like SeededSampler's, the seed taken from the position, so the
    copies of an image get different augmentations and a resumed epoch replays exactly.
    """

    def __init__(self, size: int, repeats: int = 3, seed: int = 0, rank: int = 0, world_size: int = 1,
                 selected_round: int = 256):
        self.size, self.repeats, self.seed = size, repeats, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.num_samples = math.ceil(size * repeats / world_size)
        self.total = self.num_samples * world_size
        rounded = size // selected_round * selected_round if selected_round else size
        self.num_selected = (rounded // world_size) if rounded >= world_size else math.ceil(size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=order_generator(self.seed, self.epoch))
        idx = torch.repeat_interleave(order, self.repeats).tolist()
        idx += idx[: self.total - len(idx)]  # pad so every rank steps equally often
        positions = range(self.rank, self.total, self.world_size)
        for _, pos in zip(range(self.num_selected), positions):
            yield idx[pos], sample_seed(self.seed, self.epoch, pos)

    def __len__(self) -> int:
        return self.num_selected
