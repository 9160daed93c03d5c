"""`check_data`: the whole check of one data set, from opening it to the report's findings (report.py writes them).

Order: open the splits (inputs) -> scan every entry once (scan: decode, hash) -> exact groups and near pairs
(duplicates) -> with a model, its probabilities or embeddings and confident learning (labels) -> statistics.
Nothing is written into the data: every file is opened for reading only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import DataConfig
from .duplicates import PHASH_THRESHOLD, duplicate_findings, embedding_pairs, exact_groups, merge_near, near_pairs
from .inputs import NO_LABEL, DataSet, open_data
from .labels import label_suspects
from .scan import ScanResult, scan


@dataclass
class CheckOptions:
    workers: int = 0  # scan (and model) loader processes; 0: in this process
    progress: bool = True
    model: Any = None  # a model file path or an inference.model_spec.ModelSpec: label suspects (None: not ranked)
    device: str = "auto"
    batch_size: int = 64
    min_side: int = 32  # shorter side below this: a tiny image
    phash_threshold: int = PHASH_THRESHOLD
    near_cosine: float | None = None  # with a model: embedding pairs at least this alike are near duplicates too
    max_suspects: int = 200


@dataclass
class Findings:
    """What the check found, with the data and scan behind it (the HTML page and --fix read them again)."""

    data: DataSet
    res: ScanResult
    options: CheckOptions
    duplicates: dict[str, Any] = field(default_factory=dict)
    suspects: list[dict[str, Any]] = field(default_factory=list)
    suspects_note: str = ""

    def name(self, pos: int) -> str:
        return self.data.splits[int(self.res.split[pos])].name_of(int(self.res.index[pos]))

    def split_name(self, pos: int) -> str:
        return self.data.splits[int(self.res.split[pos])].name

    def class_name(self, pos: int) -> str | None:
        y = int(self.res.label[pos])
        return None if y == NO_LABEL else self.data.classes[y]


def check_data(cfg: DataConfig, options: CheckOptions | None = None) -> Findings:
    """Check the data cfg names (any kind training reads with random access); see the module doc."""
    options = options or CheckOptions()
    data = open_data(cfg)
    res = scan(data, options.workers, options.progress)
    found = Findings(data, res, options)
    groups = exact_groups(res)
    near = near_pairs(res, options.phash_threshold)
    found.suspects, found.suspects_note, outputs = label_suspects(
        options.model, data, res, options.device, options.batch_size, options.workers, options.progress,
        options.max_suspects)
    if options.near_cosine is not None and outputs is not None and outputs.embeddings is not None:
        near = merge_near(near, embedding_pairs(outputs.embeddings, outputs.pos, res, options.near_cosine))
    found.duplicates = duplicate_findings(res, groups, near, found.name, found.split_name, found.class_name)
    return found
