"""WebDataset shards: what `visionzoo pack` writes, what the webdataset library reads back, random access through
the sidecar index, the old format's converter, and streaming (the epoch plan, HTTP on 127.0.0.1, pipe:, torchrun)."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.cli import main
from visionzoo.config import DataConfig
from visionzoo.core.errors import BadImageError
from visionzoo.data.loader import build_data, make_loader, set_loader_epoch
from visionzoo.data.packed import packed_samples
from visionzoo.data.streaming import ShardStream, epoch_plan, samples_in_plan
from visionzoo.models import get_model_cfg

wds = pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """12 real JPEGs per class (3 classes) in train/, 5 in val/: mostly within the cap (copied as they are), one
    large (re-encoded), one PNG (re-encoded), a name with dots."""
    root = tmp_path_factory.mktemp("jpegs") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 5)):
        for c, cls in enumerate(("ant", "bee", "cat")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                base = np.zeros((24, 32, 3), np.uint8)
                base[..., c] = 200
                img = Image.fromarray((base + rng.integers(0, 50, base.shape)).astype(np.uint8))
                img.save(root / split / cls / f"{cls}_{i:02d}.jpg", quality=90)
    Image.new("RGB", (120, 80), (10, 200, 10)).save(root / "train" / "bee" / "big.one.jpg", quality=95)
    Image.new("RGB", (20, 20), (0, 0, 250)).save(root / "train" / "cat" / "drawn.png")
    return root


@pytest.fixture(scope="module")
def pack_dir(jpeg_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert main(["pack", "--data", str(jpeg_folder), "--output", str(out), "--max-size", "64", "--shard-images", "8",
                 "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def http_root(pack_dir):
    """pack_dir's parent served over HTTP on 127.0.0.1 (a thread); yields the base URL of the pack."""
    handler = functools.partial(_QuietHandler, directory=str(pack_dir.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{pack_dir.name}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_webdataset_reads_every_image_and_label_of_a_pack(jpeg_folder, pack_dir):
    meta = json.loads((pack_dir / "pack.json").read_text())
    classes = json.loads((pack_dir / "classes.json").read_text())
    assert classes == ["ant", "bee", "cat"] and meta["format"] == "visionzoo-wds-1"
    for split in ("train", "val"):
        files = meta[split]["files"]
        assert len(files) == meta[split]["shards"] > 1 and all(f["samples"] <= 8 for f in files)
        pattern = str(pack_dir / f"{split}-{{000000..{len(files) - 1:06d}}}.tar")
        read = {s["__key__"]: s for s in wds.WebDataset(pattern, shardshuffle=False)}
        sources = sorted(p for p in (jpeg_folder / split).rglob("*") if p.is_file())
        assert len(read) == len(sources) == meta[split]["images"] == sum(f["samples"] for f in files)
        store = packed_samples(pack_dir, split)
        for i, (name, label) in enumerate(store.items):
            sample = read[store.store.keys[i].decode()]
            src = jpeg_folder / name
            assert int(sample["cls"]) == label == classes.index(src.parent.name)
            assert sample["jpg"] == store.store.read(i)  # the index slices the very bytes webdataset reads
            if src.suffix == ".jpg" and max(Image.open(src).size) <= 64:
                assert sample["jpg"] == src.read_bytes()  # copied as it is
            else:  # re-encoded as a JPEG with the longer side capped
                img = Image.open(io.BytesIO(sample["jpg"]))
                assert img.format == "JPEG" and max(img.size) == min(64, max(Image.open(src).size))
    keys = np.load(pack_dir / "train.index.npz")["key"]
    assert b"train/bee/big_one" in keys.tolist()  # no dot left in a key: webdataset splits at the first one


def test_list_splits_with_open_set_entries_pack(jpeg_folder, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classes.txt").write_text("ant\nbee\ncat\n")
    (lists / "train.txt").write_text("train/ant/ant_00.jpg 0\ntrain/bee/bee_01.jpg 1\ntrain/cat/cat_02.jpg 2\n")
    (lists / "open.txt").write_text("val/ant/ant_00.jpg 0\nval/cat/cat_03.jpg -1\n")
    out = tmp_path / "lt"
    assert main(["pack", "--data", str(jpeg_folder), "--list", f"train={lists / 'train.txt'}",
                 "--list", f"open={lists / 'open.txt'}", "--output", str(out), "--workers", "1", "--no-progress"]) == 0
    read = list(wds.WebDataset(str(out / "open-000000.tar"), shardshuffle=False))
    assert [int(s["cls"]) for s in read] == [0, -1]
    assert [y for _, y in packed_samples(out, "open").items] == [0, -1]
    assert json.loads((out / "classes.json").read_text()) == ["ant", "bee", "cat"]


def _write_old_pack(src: Path, out: Path) -> None:
    """A pack in the format visionzoo wrote before WebDataset shards (visionzoo-pack-1)."""
    classes = ["ant", "bee", "cat"]
    (out / "train").mkdir(parents=True)
    files = sorted((src / "train").rglob("*.jpg"))
    blob = b"".join(p.read_bytes() for p in files)
    (out / "train" / "shard-00000.bin").write_bytes(blob)
    lengths = np.array([p.stat().st_size for p in files], np.int64)
    np.savez(out / "train" / "index.npz", shard=np.zeros(len(files), np.int32),
             offset=np.concatenate([[0], np.cumsum(lengths)[:-1]]), length=lengths,
             label=np.array([classes.index(p.parent.name) for p in files], np.int32),
             name=np.array([str(p.relative_to(src)) for p in files]))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (out / "pack.json").write_text(json.dumps({"format": "visionzoo-pack-1", "splits": ["train"], "max_size": 256,
                                               "quality": 90, "train": {"images": len(files)}}))


def test_an_old_pack_is_refused_with_the_command_that_converts_it(jpeg_folder, tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    _write_old_pack(jpeg_folder, old)
    assert main(["train", "--data", str(old), "--model", "resnet10", "--epochs", "1", "--output",
                 str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"visionzoo pack --data {old} --output" in err[0]
    assert main(["pack", "--data", str(old), "--output", str(new), "--no-progress"]) == 0
    assert "converted from" in capsys.readouterr().out
    converted = packed_samples(new, "train")
    files = sorted((jpeg_folder / "train").rglob("*.jpg"))
    names = [n for n, _ in converted.items]
    assert sorted(names) == [str(p.relative_to(jpeg_folder)) for p in files]  # in a seeded random order (train)
    assert names != sorted(names)
    assert all(converted.store.read(i) == (jpeg_folder / n).read_bytes() for i, n in enumerate(names))


# ------------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("world,workers,batch", [(1, 1, 4), (2, 2, 3), (3, 2, 5), (2, 3, 1)])
def test_the_epoch_plan_reads_each_sample_once(world, workers, batch):
    counts = [8, 8, 3, 8, 1, 7]  # 35 samples, uneven shards
    n = sum(counts)
    firsts = np.cumsum([0] + counts[:-1])
    for epoch in (0, 1):
        for drop_last in (False, True):
            read: Counter[int] = Counter()
            for rank in range(world):
                got = 0
                for worker in range(workers):
                    took = 0
                    for seg in epoch_plan(counts, epoch, 7, drop_last, rank, world, batch, drop_last, worker, workers):
                        assert 0 <= seg.skip and seg.skip + seg.take <= counts[seg.shard]
                        read.update(int(firsts[seg.shard]) + seg.skip + k for k in range(seg.take))
                        took += seg.take
                    # whole batches per worker (only the last worker of an evaluation may end with a partial one),
                    # so the loader yields the same number of batches on every rank
                    assert took % batch == 0 or (not drop_last and worker == workers - 1)
                    got += took
                assert got == samples_in_plan(n, rank, world, batch, drop_last)
            if not drop_last:  # evaluation: every sample exactly once
                assert read == Counter(range(n))
            else:  # training: equal whole batches per rank; repeats only from the wrap-around
                padding = world * -(-n // world) - n
                assert max(read.values()) <= 2 and sum(v - 1 for v in read.values()) <= padding
                per_rank = samples_in_plan(n, 0, world, batch, True)
                assert all(samples_in_plan(n, r, world, batch, True) == per_rank for r in range(world))
                assert per_rank % batch == 0 and sum(read.values()) == world * per_rank
                assert n - len(read) < world * batch  # only partial batches are left out


def _epochs(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]


def _stream_config(url: str, **kw) -> DataConfig:
    return DataConfig(data=url, img_size=16, workers=kw.pop("workers", 2), **kw)


def test_streamed_keys_cover_the_split_and_augment_as_random_access(pack_dir, http_root):
    cfg = _stream_config(http_root, shuffle_buffer=5)
    data = build_data(cfg, get_model_cfg("resnet10"), seed=3)
    train, val = data.split("train"), data.split("val")
    assert isinstance(train, ShardStream) and data.classes == ["ant", "bee", "cat"]
    assert train.size == 38 and val.size == 15
    for ds, loader_train in ((train, True), (val, False)):
        ds.keys = True
        loader = make_loader(ds, 4, 2, loader_train, seed=3)
        orders = []
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            keys = [k for batch in loader for k in batch[0]]
            orders.append(keys)
            assert len(keys) == len(set(keys)) == len(loader.dataset) == (36 if loader_train else 15)
        assert orders[0] != orders[1] if loader_train else orders[0] == orders[1]
    # the same image gets the same augmentation draws streamed or read at random (seeded by its pack index)
    train.keys = False
    set_loader_epoch(loader := make_loader(train, 38, 0, True, seed=3), 0)
    streamed = next(iter(loader))[0]
    local = build_data(DataConfig(data=str(pack_dir), img_size=16), get_model_cfg("resnet10"), seed=3).split("train")
    drawn = [local[(i, (3 * 1_000_003 * 10_000_019 + i) % 2**62)][0] for i in range(38)]  # SeededSampler's seeds
    assert len(streamed) == 38 and not torch.equal(drawn[0], drawn[1])
    assert sorted(t.numpy().tobytes() for t in streamed) == sorted(t.numpy().tobytes() for t in drawn)


def test_training_streams_shards_over_http_and_through_a_pipe(pack_dir, http_root, tmp_path):
    run = tmp_path / "http"
    assert main(["train", "--model", "resnet10", "--data", http_root, "--img-size", "16", "--epochs", "2",
                 "--batch-size", "8", "--workers", "2", "--device", "cpu", "--output", str(run), "--no-progress"]) == 0
    rows = _epochs(run)
    assert [r["epoch"] for r in rows] == [1, 2] and [r["val_num_images"] for r in rows] == [15, 15]
    # brace pattern through pipe:cat (pack.json named: a command has no folder); val shards as local paths
    shards = f"pipe:cat {pack_dir}/train-{{000000..000004}}.tar"
    run2 = tmp_path / "pipe"
    assert main(["train", "--model", "resnet10", "--train-urls", shards, "--pack-info", str(pack_dir / "pack.json"),
                 "--val-urls", f"{pack_dir}/val-000000.tar::{pack_dir}/val-000001.tar", "--img-size", "16",
                 "--epochs", "1", "--batch-size", "8", "--workers", "1", "--device", "cpu",
                 "--output", str(run2), "--no-progress"]) == 0
    assert [r["val_num_images"] for r in _epochs(run2)] == [15]


def test_a_missing_shard_is_one_line_naming_it(http_root, tmp_path, capsys):
    rc = main(["train", "--model", "resnet10", "--train-urls", f"{http_root}/train-{{000000..000009}}.tar",
               "--img-size", "16", "--epochs", "1", "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "train-000005.tar" in err[0]


KEY_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from visionzoo.config import DataConfig
from visionzoo.data.loader import build_data, make_loader, set_loader_epoch
from visionzoo.models import get_model_cfg

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
data = build_data(DataConfig(data=sys.argv[1], img_size=16, workers=2), get_model_cfg("resnet10"), seed=5)
seen = {}
for split in ("train", "val"):
    ds = data.split(split)
    ds.keys = True
    loader = make_loader(ds, 3, 2, split == "train", seed=5, rank=rank, world_size=world)
    for epoch in (0, 1):
        set_loader_epoch(loader, epoch)
        seen[f"{split}{epoch}"] = [k for batch in loader for k in batch[0]]
with open(os.path.join(sys.argv[2], f"keys-{rank}.json"), "w") as f:
    json.dump(seen, f)
dist.destroy_process_group()
"""


def _torchrun(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _outputs(procs: list[subprocess.Popen], timeout: int = 600) -> list[str]:
    """Each agent's output once all have ended; on a timeout every agent is killed (no stray trainers)."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _check_keys(out: Path, world: int, pack_dir: Path) -> None:
    ranks = [json.loads((out / f"keys-{r}.json").read_text()) for r in range(world)]
    for split in ("train", "val"):
        n = json.loads((pack_dir / "pack.json").read_text())[split]["images"]
        for epoch in (0, 1):
            keys = [k for r in ranks for k in r[f"{split}{epoch}"]]
            # val: all 15 once; train: 38 over 2 ranks = 19 each, 6 whole batches of 3 -> 36 distinct keys
            assert len(keys) == len(set(keys)) == (n if split == "val" else 36)
            assert len({len(r[f"{split}{epoch}"]) for r in ranks}) == 1 or split == "val"


@pytest.mark.slow
def test_torchrun_two_processes_read_each_streamed_sample_once(pack_dir, http_root, tmp_path):
    script = tmp_path / "keys.py"
    script.write_text(KEY_SCRIPT)
    proc = _torchrun(["--standalone", "--nproc-per-node", "2", str(script), http_root, str(tmp_path)])
    out = _outputs([proc])[0]
    assert proc.returncode == 0, out[-3000:]
    _check_keys(tmp_path, 2, pack_dir)


@pytest.mark.slow
def test_two_simulated_nodes_train_from_streamed_shards(pack_dir, http_root, tmp_path):
    """Two torchrun agents (--nnodes 2, c10d rendezvous on 127.0.0.1), as the README's multi-node section."""
    import socket

    def node_args(port: int, node: int, job: str) -> list[str]:
        return ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job]

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    script = tmp_path / "keys.py"
    script.write_text(KEY_SCRIPT)
    port = free_port()
    procs = [_torchrun([*node_args(port, n, "keys"), str(script), http_root, str(tmp_path)]) for n in (0, 1)]
    outs = _outputs(procs)
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    _check_keys(tmp_path, 2, pack_dir)
    run = tmp_path / "run"
    train = ["-m", "visionzoo", "train", "--model", "resnet10", "--data", http_root, "--img-size", "16",
             "--epochs", "2", "--batch-size", "6", "--workers", "1", "--device", "cpu", "--output", str(run),
             "--no-progress"]
    port = free_port()
    procs = [_torchrun([*node_args(port, n, "train"), *train]) for n in (0, 1)]
    outs = _outputs(procs)
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    rows = _epochs(run)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["val_num_images"] == 15 for r in rows)
    assert "over 2 processes" in outs[0] + outs[1]


def test_pack_refuses_a_pack_as_its_source(pack_dir, tmp_path, capsys):
    assert main(["pack", "--data", str(pack_dir), "--output", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "is a pack already" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def _broken_copy(pack_dir: Path, name: str, index: int | None = 3) -> tuple[Path, str]:
    """A copy of the pack beside it (so the HTTP fixture serves it) whose train image `index` is garbage of the
    same length (the tar stays valid); returns the copy and the broken sample's key."""
    copy = pack_dir.parent / name
    if not copy.exists():
        shutil.copytree(pack_dir, copy)
    if index is None:
        return copy, ""
    if not (copy / "broken").exists():
        (copy / "broken").touch()
        with np.load(copy / "train.index.npz") as idx:
            shard, offset, length = int(idx["shard"][index]), int(idx["offset"][index]), int(idx["length"][index])
        with open(copy / f"train-{shard:06d}.tar", "r+b") as f:
            f.seek(offset)
            f.write(b"\xff\xd8" + b"\x00" * (length - 2))
    return copy, np.load(copy / "train.index.npz")["key"][index].decode()


def test_streamed_training_replaces_a_bad_image_and_keeps_full_batches(pack_dir, http_root):
    _, key = _broken_copy(pack_dir, "broken")
    url = http_root.rsplit("/", 1)[0] + "/broken"
    data = build_data(_stream_config(url, skip_bad_images=True), get_model_cfg("resnet10"), seed=1)
    loader = make_loader(data.split("train"), 4, 2, True, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 9 and all(len(b[1]) == 4 for b in batches)
    assert sum(b[2] for b in batches) == 1  # the one stand-in, counted as a skipped image
    strict = build_data(_stream_config(url), get_model_cfg("resnet10"), seed=1)
    with pytest.raises(BadImageError, match=key):
        list(make_loader(strict.split("train"), 4, 0, True, seed=1))


def test_a_shard_missing_on_the_server_is_one_line_naming_it(pack_dir, http_root, tmp_path, capsys):
    copy, _ = _broken_copy(pack_dir, "gone", None)
    (copy / "train-000002.tar").unlink(missing_ok=True)
    url = http_root.rsplit("/", 1)[0] + "/gone"
    rc = main(["train", "--model", "resnet10", "--data", url, "--img-size", "16", "--epochs", "1", "--workers", "0",
               "--batch-size", "4", "--device", "cpu", "--output", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "gone/train-000002.tar" in err[0]
