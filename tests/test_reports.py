"""Evaluation reports: confusion matrix, per-class precision/recall/F1, the table, the CSV/PNG and `eval`'s output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionzoo.cli import main
from visionzoo.cli.eval import summary_line
from visionzoo.inference.reports import confusion_matrix, per_class_metrics, per_class_table, write_confusion

CLASSES = ["circle", "square", "triangle", "unused"]
# 9 labelled images and one open-set image (-1), which no class counts
TARGETS = [0, 0, 0, 1, 1, 2, 2, 2, 2, -1]
PREDS = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]


def test_confusion_matrix_and_metrics_match_hand_computed_values():
    cm = confusion_matrix(TARGETS, PREDS, 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 1, 0, 0],
                           [0, 1, 1, 0],
                           [1, 0, 3, 0],
                           [0, 0, 0, 0]]
    rows = per_class_metrics(cm, CLASSES)
    assert [r["class"] for r in rows] == CLASSES
    assert [r["support"] for r in rows] == [3, 2, 4, 0]
    # circle: tp 2, predicted 3 (2 + triangle's 1), true 3; square: tp 1, predicted 2, true 2;
    # triangle: tp 3, predicted 4 (1 + 3), true 4; unused: never true, never predicted -> 0, not NaN
    want = {"circle": (200 / 3, 200 / 3), "square": (50.0, 50.0), "triangle": (75.0, 75.0), "unused": (0.0, 0.0)}
    for r in rows:
        precision, recall = want[r["class"]]
        assert r["precision"] == pytest.approx(precision)
        assert r["recall"] == pytest.approx(recall)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert r["f1"] == pytest.approx(f1)


def test_precision_and_recall_differ_when_errors_are_one_sided():
    # class 0 is predicted for every image: recall 100 for it, precision 50; class 1 is never predicted
    rows = per_class_metrics(confusion_matrix([0, 0, 1, 1], [0, 0, 0, 0], 2), ["a", "b"])
    assert (rows[0]["precision"], rows[0]["recall"]) == (pytest.approx(50.0), pytest.approx(100.0))
    assert rows[0]["f1"] == pytest.approx(2 * 50 * 100 / 150)
    assert (rows[1]["precision"], rows[1]["recall"], rows[1]["f1"]) == (0.0, 0.0, 0.0)


def test_table_is_aligned():
    lines = per_class_table(per_class_metrics(confusion_matrix(TARGETS, PREDS, 4), CLASSES)).splitlines()
    assert lines[0].split() == ["class", "accuracy", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["circle", "66.67", "66.67", "66.67", "66.67", "3"]
    assert lines[4].split() == ["unused", "-", "0.00", "0.00", "0.00", "0"]  # no images: no accuracy
    # every column ends where its header ends: numbers right-aligned under their heading
    for word in ("accuracy", "precision", "recall", "support"):
        end = lines[0].index(word) + len(word)
        assert all(line[end - 1] != " " and (len(line) == end or line[end] == " ") for line in lines[1:])


def test_write_confusion_csv_and_png(tmp_path):
    cm = confusion_matrix(TARGETS, PREDS, 4)
    paths = write_confusion(cm, CLASSES, tmp_path / "cm")
    assert paths == [tmp_path / "cm.csv", tmp_path / "cm.png"]
    with open(paths[0], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASSES  # header: predicted classes
    assert [r[0] for r in rows[1:]] == CLASSES  # first column: true classes
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == cm.tolist()
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.csv", "cm.png"]  # no temp files left


def test_top5_is_shown_only_with_more_than_five_classes():
    base = {"top1": 50.0, "top5": 100.0, "loss": 0.5, "num_images": 10, "skipped_images": 0, "weights": "raw"}
    few = summary_line({**base, "per_class": [{}] * 5})
    many = summary_line({**base, "per_class": [{}] * 6})
    assert "top-5" not in few and few.startswith("top-1 50.00")
    assert "top-5 100.00" in many


def test_eval_prints_table_and_writes_confusion_and_per_class_json(tiny_ckpt, tmp_path, capsys):
    report, prefix = tmp_path / "eval.json", tmp_path / "out" / "confusion"
    prefix.parent.mkdir()
    assert main(["eval", "--checkpoint", str(tiny_ckpt), "--no-progress", "--json", str(report),
                 "--confusion", str(prefix)]) == 0
    out = capsys.readouterr().out
    r = json.loads(report.read_text())
    names = [row["class"] for row in r["per_class"]]
    assert names == ["circle", "square", "triangle"]
    # the matrix: 3x3, every validation image counted once, its diagonal the per-class correct counts
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == r["num_images"] == 12
    assert np.diag(cm).tolist() == [row["correct"] for row in r["per_class"]]
    for row, expected in zip(r["per_class"], per_class_metrics(cm, names)):
        assert row["recall"] == pytest.approx(row["top1"])  # recall of a class is its accuracy
        assert (row["precision"], row["f1"]) == (pytest.approx(expected["precision"]), pytest.approx(expected["f1"]))
    # the printed summary: no top-5 with 3 classes, then the table with one line per class
    lines = out.splitlines()
    assert lines[0].startswith("top-1 ") and "top-5" not in out
    assert lines[1].split() == ["class", "accuracy", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[2:5]] == names
    with open(f"{prefix}.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == names and [[int(v) for v in row[1:]] for row in rows[1:]] == cm.tolist()
    assert Path(f"{prefix}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {prefix}.csv" in out and f"wrote {prefix}.png" in out
