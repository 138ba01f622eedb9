"""Token shards: writer, metadata, DDP/worker planning, the DataLoader path, digits preparation, the DataModule."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lit_nat.core.errors import DataError
from lit_nat.data import (
    FORMAT,
    DatasetMeta,
    MetadataError,
    ShardLoader,
    ShardWriter,
    TokenShardDataModule,
    TokenShardDataset,
    plan_eval,
    plan_resampled,
    plan_train,
    read_metadata,
    write_metadata,
)
from lit_nat.demos.digits import prepare_digits
from lit_nat.tokenizers import tokenizer_from_config

GRID = (2, 3)
K = 1000
TOKENIZER = {"name": "pixel", "levels": K, "image_size": 3}  # only compared, never built


def _tokens(i: int) -> np.ndarray:
    return (i * 7 + np.arange(GRID[0] * GRID[1])) % K


def _writer(root: Path, split: str = "train", spc: int = 4, **kw) -> ShardWriter:
    args = dict(codebook_size=K, grid_size=GRID, num_classes=5, tokenizer_config=TOKENIZER, samples_per_shard=spc)
    return ShardWriter(root, split, **{**args, **kw})


def _write(root: Path, n: int, split: str = "train", spc: int = 4, **kw) -> None:
    with _writer(root, split, spc, **kw) as w:
        for i in range(n):
            w.write(_tokens(i), i % 5)


def _read_all(root: Path, split: str = "train", batch_size: int = 3) -> list[dict]:
    info = read_metadata(root).splits[split]
    names = [s.name for s in info.shards]
    ds = TokenShardDataset(root, names, info.shard_sizes, batch_size=batch_size, mode="eval", return_keys=True)
    return list(ShardLoader(ds))


# ---------------------------------------------------------------------------------------------------- writer + meta


def test_writer_round_trip(tmp_path):
    _write(tmp_path, 10)
    meta = read_metadata(tmp_path)
    assert meta.splits["train"].shard_sizes == [4, 4, 2]
    assert [s.name for s in meta.splits["train"].shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert (meta.codebook_size, meta.grid_size, meta.num_classes, meta.tokenizer) == (K, GRID, 5, TOKENIZER)
    raw = json.loads((tmp_path / "meta.json").read_text())
    assert raw["format"] == FORMAT and raw["splits"]["train"]["num_samples"] == 10
    with tarfile.open(tmp_path / "train-000000.tar") as tar:  # on disk: uint16 .npy + ASCII class
        names = tar.getnames()
        arr = np.load(io.BytesIO(tar.extractfile("000000001.tokens.npy").read()))
        assert tar.extractfile("000000001.cls").read() == b"1"
    assert names == ["000000000.cls", "000000000.tokens.npy"] + [
        f"00000000{i}.{e}" for i in (1, 2, 3) for e in ("cls", "tokens.npy")
    ]
    assert arr.dtype == np.uint16 and arr.shape == (6,) and np.array_equal(arr, _tokens(1))
    batches = _read_all(tmp_path)
    assert [len(b["key"]) for b in batches] == [3, 3, 3, 1]
    ids, labels = torch.cat([b["ids"] for b in batches]), torch.cat([b["label"] for b in batches])
    assert ids.dtype == torch.long and labels.dtype == torch.long
    assert torch.equal(ids, torch.from_numpy(np.stack([_tokens(i) for i in range(10)])))
    assert labels.tolist() == [i % 5 for i in range(10)]


def test_writer_text_and_keys(tmp_path):
    with _writer(tmp_path) as w:
        w.write(_tokens(0), 1, text="a zero", key="img0")
        w.write(_tokens(1), 2, captions=["ünï", "two"], key="img1")
        with pytest.raises(ValueError, match="has the members .* the split's others"):
            w.write(_tokens(2), 2)
        with pytest.raises(ValueError, match="key"):
            w.write(_tokens(2), 2, text="x", key="a.b")
        with pytest.raises(ValueError, match="at least one caption"):
            w.write(_tokens(2), 2, captions=[])
    assert read_metadata(tmp_path).fields == ("tokens.npy", "cls", "captions.json")
    (batch,) = _read_all(tmp_path)
    assert batch["text"] == ["a zero", "ünï"] and batch["key"] == ["img0", "img1"]  # evaluation: a fixed caption


def test_shard_appears_only_when_complete(tmp_path):
    with _writer(tmp_path) as w:
        for i in range(3):
            w.write(_tokens(i), 0)
        assert not (tmp_path / "train-000000.tar").exists()
        assert len(list(tmp_path.glob(".train-000000.tar.*.tmp"))) == 1  # being written, under a temporary name
        w.write(_tokens(3), 0)
        assert (tmp_path / "train-000000.tar").exists() and not list(tmp_path.glob(".*.tmp"))
        w.write(_tokens(4), 0)
        assert not (tmp_path / "train-000001.tar").exists() and not (tmp_path / "meta.json").exists()
    assert (tmp_path / "train-000001.tar").exists() and (tmp_path / "meta.json").exists()


def test_crash_mid_shard_leaves_no_complete_looking_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with _writer(tmp_path) as w:
            for i in range(6):
                w.write(_tokens(i), 0)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    _write(tmp_path, 6)  # and a retry is not blocked
    assert read_metadata(tmp_path).splits["train"].num_samples == 6


def test_refuses_codes_that_do_not_fit(tmp_path):
    w = _writer(tmp_path / "a", codebook_size=65536)
    with pytest.raises(ValueError, match="65536"):
        w.write(np.full(6, 70000), 0)
    with pytest.raises(ValueError, match="negative"):
        w.write(np.full(6, -1), 0)
    with pytest.raises(ValueError, match=r"uint16.*65536|65536.*uint16"):
        _writer(tmp_path / "b", codebook_size=65537)
    w = _writer(tmp_path / "c")
    with pytest.raises(ValueError, match="outside the codebook"):
        w.write(np.full(6, K), 0)
    with pytest.raises(ValueError, match="expected 6 token ids"):
        w.write(np.zeros(5, dtype=int), 0)
    with pytest.raises(TypeError, match="integers"):
        w.write(np.zeros(6), 0)
    with pytest.raises(ValueError, match="label 5"):
        w.write(np.zeros(6, dtype=int), 5)


def test_refuses_mismatched_root_and_keeps_data(tmp_path):
    _write(tmp_path, 5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for change in (dict(codebook_size=16), dict(grid_size=(3, 3)), dict(tokenizer_config={"name": "other"})):
        with pytest.raises(ValueError, match="different data set") as err:
            _writer(tmp_path, "val", **change)
        assert str(tmp_path / "meta.json") in str(err.value)
    with pytest.raises(FileExistsError, match="overwrite"):
        _writer(tmp_path, "train")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _write(tmp_path, 3, split="val")  # a compatible split is merged in
    assert read_metadata(tmp_path).splits.keys() == {"train", "val"}
    _write(tmp_path, 2, split="train", overwrite=True)
    assert read_metadata(tmp_path).splits["train"].num_samples == 2


def test_read_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lit_nat tokenize --images") as err:
        read_metadata(tmp_path)  # not a digits root: the hint is the tokenizer, not the digits demo
    assert str(tmp_path / "meta.json") in str(err.value)
    with pytest.raises(FileNotFoundError, match="prepare_digits.py --root.*--data.prepare digits`"):
        read_metadata(tmp_path / "digits")
    with pytest.raises(FileNotFoundError, match="--data.prepare digits_text`"):  # the captioned demo's root
        read_metadata(tmp_path / "digits_text")
    _write(tmp_path, 5)
    good = json.loads((tmp_path / "meta.json").read_text())

    def broken(**change):
        data = {**good, **change}
        (tmp_path / "meta.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
        with pytest.raises(MetadataError) as err:
            read_metadata(tmp_path)
        assert str(tmp_path / "meta.json") in str(err.value)
        return str(err.value)

    assert "'grid_size'" in broken(grid_size="8x8") and "[h, w]" in broken(grid_size=[8])
    assert "'codebook_size'" in broken(codebook_size=None) and "missing" in broken(codebook_size=None)
    assert "'num_classes'" in broken(num_classes="10")
    assert "'format'" in broken(format="lit_nat.tokens/99")
    bad_split = {"train": {"num_samples": 7, "shards": good["splits"]["train"]["shards"]}}
    assert "splits.train.num_samples" in broken(splits=bad_split)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_metadata(tmp_path)
    write_metadata(tmp_path, DatasetMeta.from_dict(good))
    assert read_metadata(tmp_path).splits["train"].num_samples == 5


def test_reader_detects_a_shard_shorter_than_its_metadata(tmp_path):
    _write(tmp_path, 6)
    data = json.loads((tmp_path / "meta.json").read_text())
    data["splits"]["train"]["shards"][1]["num_samples"] = 4  # holds 2
    data["splits"]["train"]["num_samples"] = 8
    (tmp_path / "meta.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="train-000001.tar holds 2 samples"):
        _read_all(tmp_path)


# ---------------------------------------------------------------------------------------------------------- planning

SIZES = [13, 7, 20, 1, 9, 16, 11, 5, 14, 8]  # uneven; total 104


def _samples(plans) -> list[tuple[int, int]]:
    return [(r.shard, j) for p in plans for r in p.ranges for j in range(r.start, r.stop)]


def _check_worker_reads_contiguous(plan, sizes):
    for i, r in enumerate(plan.ranges):
        assert 0 <= r.start < r.stop <= sizes[r.shard]
        if 0 < i:
            assert r.start == 0  # only the first range may start inside a shard
        if i < len(plan.ranges) - 1:
            assert r.stop == sizes[r.shard]  # only the last may stop inside one
    assert len({r.shard for r in plan.ranges}) == len(plan.ranges)


@pytest.mark.parametrize("sizes", [SIZES, [12] * 8])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("bs", [1, 4, 5, 8])
def test_train_plan(sizes, world, workers, bs):
    total = sum(sizes)
    per_rank = total // (world * bs)
    orders = []
    for epoch in range(3):
        read = []
        for rank in range(world):
            plans = plan_train(sizes, world_size=world, rank=rank, num_workers=workers, batch_size=bs, epoch=epoch)
            assert len(plans) == max(1, workers)
            assert sum(p.num_batches for p in plans) == per_rank  # every rank: exactly the same full batches
            assert max(p.num_batches for p in plans) - min(p.num_batches for p in plans) <= 1
            for p in plans:
                assert p.num_samples == p.num_batches * bs  # whole batches per worker
                _check_worker_reads_contiguous(p, sizes)
            again = plan_train(sizes, world_size=world, rank=rank, num_workers=workers, batch_size=bs, epoch=epoch)
            assert again == plans  # deterministic: every process computes the same plan
            read += _samples(plans)
        assert len(read) == len(set(read))  # no sample twice in an epoch
        lost = total - len(read)
        assert lost < world * bs and (total % (world * bs) != 0 or lost == 0)
        orders.append(read)
    assert orders[0] != orders[1] != orders[2]  # a new order every epoch


def test_train_plan_shuffle_off_and_errors():
    plans = plan_train(SIZES, world_size=2, rank=0, num_workers=1, batch_size=4, shuffle=False, epoch=5)
    assert plans[0].ranges[0].shard == 0 and plans[0].ranges[0].start == 0
    def first_shards(epoch):
        plan = plan_train(SIZES, world_size=1, rank=0, num_workers=0, batch_size=4, seed=0, epoch=epoch)
        return [r.shard for r in plan[0].ranges][:4]

    assert first_shards(3) == first_shards(3) != first_shards(4)  # seeded by (seed, epoch), new each epoch
    with pytest.raises(ValueError, match="fewer than world_size"):
        plan_train([3, 2], world_size=2, rank=0, num_workers=0, batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        plan_train(SIZES, world_size=2, rank=2, num_workers=0, batch_size=4)


def test_train_plan_leaves_out_different_samples_each_epoch():
    left_out = []
    for epoch in range(4):
        plans = [plan_train(SIZES, world_size=3, rank=r, num_workers=2, batch_size=5, epoch=epoch) for r in range(3)]
        read = _samples(itertools.chain(*plans))
        left_out.append(set((s, j) for s, n in enumerate(SIZES) for j in range(n)) - set(read))
    assert all(len(s) == 104 - 90 for s in left_out) and len({frozenset(s) for s in left_out}) == 4


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("bs", [1, 4, 7, 64])
def test_eval_plan_reads_every_sample_once(world, workers, bs):
    read, counts = [], []
    for rank in range(world):
        plans = plan_eval(SIZES, world_size=world, rank=rank, num_workers=workers, batch_size=bs)
        counts.append(sum(p.num_batches for p in plans))
        for p in plans:
            assert p.num_samples <= p.num_batches * bs and p.num_samples > (p.num_batches - 1) * bs or not p.ranges
            _check_worker_reads_contiguous(p, SIZES)
        read += _samples(plans)
    assert read == [(s, j) for s, n in enumerate(SIZES) for j in range(n)]  # all, once, in order
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1


@pytest.mark.parametrize("world,workers,bs,spe", [(1, 0, 4, None), (2, 3, 5, None), (4, 2, 8, 1000), (3, 1, 1, 150)])
def test_resampled_plan_quotas(world, workers, bs, spe):
    per_rank = (spe or sum(SIZES)) // (world * bs)
    plans = {}
    for rank in range(world):
        for epoch in range(2):
            ps = plan_resampled(
                SIZES,
                world_size=world,
                rank=rank,
                num_workers=workers,
                batch_size=bs,
                epoch=epoch,
                samples_per_epoch=spe,
            )
            assert sum(p.num_batches for p in ps) == per_rank
            for p in ps:
                assert p.num_samples == p.num_batches * bs
                assert all(0 <= r.start < r.stop <= SIZES[r.shard] for r in p.ranges)
                plans[(rank, epoch, p.worker)] = p.ranges
    streams = [v for v in plans.values() if v]
    assert len(streams) == len({v for v in streams})  # every (epoch, rank, worker) draws its own stream


def test_resampled_plan_covers_shards_by_size():
    hits = np.zeros(len(SIZES))
    for epoch in range(200):
        for r in plan_resampled(SIZES, world_size=1, rank=0, num_workers=0, batch_size=4, epoch=epoch)[0].ranges:
            hits[r.shard] += len(r)
    share = hits / hits.sum()
    assert np.allclose(share, np.array(SIZES) / sum(SIZES), atol=0.03)


# ------------------------------------------------------------------------------------------------ DataLoader path


@pytest.fixture(scope="module")
def root96(tmp_path_factory):
    root = tmp_path_factory.mktemp("root96")
    _write(root, 96, spc=13)  # 7 shards of 13 and one of 5
    return root


def _loader(root, *, rank, world, workers, bs, mode="train", loader_kw=None, **kw):
    info = read_metadata(root).splits["train"]
    ds = TokenShardDataset(
        root, [s.name for s in info.shards], info.shard_sizes, batch_size=bs, mode=mode, rank=rank,
        world_size=world, num_workers=workers, shuffle_buffer=10, return_keys=True, **kw,
    )  # fmt: skip
    return ShardLoader(ds, **(loader_kw or {}))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 3])
def test_loader_ranks_read_all_samples_once(root96, world, workers):
    keys = []
    for rank in range(world):
        loader = _loader(root96, rank=rank, world=world, workers=workers, bs=4)
        batches = list(loader)
        assert len(loader) == len(batches) == 96 // (world * 4)
        for b in batches:
            assert b["ids"].shape == (4, 6) and b["ids"].dtype == torch.long and b["label"].shape == (4,)
            for key, ids, label in zip(b["key"], b["ids"], b["label"]):
                assert torch.equal(ids, torch.from_numpy(_tokens(int(key)))) and int(label) == int(key) % 5
            keys += b["key"]
    assert sorted(keys) == [f"{i:09d}" for i in range(96)]


def test_loader_eval_mode_partial_batches(root96):
    keys = []
    for rank in range(3):
        loader = _loader(root96, rank=rank, world=3, workers=2, bs=5, mode="eval")
        batches = list(loader)
        assert len(loader) == len(batches) == 7  # 32 samples per rank: 6 full batches + 2
        keys += [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"{i:09d}" for i in range(96)]


def _epoch_keys(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


def test_epoch_advances_with_persistent_workers(root96):
    loader = _loader(root96, rank=1, world=2, workers=2, bs=4)
    assert loader.persistent_workers
    epochs = [_epoch_keys(loader) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    for e in (1, 2):  # the persistent workers really used epochs 1 and 2: a fresh loader at that epoch agrees
        fresh = _loader(
            root96, rank=1, world=2, workers=2, bs=4, loader_kw=dict(start_epoch=e, persistent_workers=False)
        )
        assert _epoch_keys(fresh) == epochs[e]
    fixed = _loader(root96, rank=1, world=2, workers=2, bs=4)
    fixed.epoch_fn = lambda: 2  # what the DataModule does with trainer.current_epoch
    assert _epoch_keys(fixed) == _epoch_keys(fixed) == epochs[2]


def test_spawned_workers_get_the_epoch_and_rank(root96):
    loader = _loader(root96, rank=0, world=2, workers=1, bs=4)
    spawned = ShardLoader(loader.dataset, multiprocessing_context="spawn", persistent_workers=True)
    refs = [_loader(root96, rank=0, world=2, workers=1, bs=4, loader_kw=dict(start_epoch=e)) for e in (0, 1)]
    assert [_epoch_keys(spawned) for _ in range(2)] == [_epoch_keys(ref) for ref in refs]


def test_resampled_loader_has_declared_length(root96):
    loader = _loader(root96, rank=0, world=2, workers=2, bs=4, mode="resampled", samples_per_epoch=40)
    assert len(loader) == len(list(loader)) == 5


# ---------------------------------------------------------------------------------------------- digits + DataModule


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare_digits(root)
    return root


def test_digits_preparation_is_exact(digits_root):
    from sklearn.datasets import load_digits

    meta = read_metadata(digits_root)
    assert (meta.codebook_size, meta.grid_size, meta.num_classes) == (17, (8, 8), 10)
    assert meta.splits["train"].num_samples + meta.splits["val"].num_samples == 1797
    assert len(meta.splits["train"].shards) >= 8
    digits = load_digits()
    tokenizer = tokenizer_from_config(meta.tokenizer)
    seen = []
    for split in ("train", "val"):
        batches = _read_all(digits_root, split, batch_size=256)
        ids = torch.cat([b["ids"] for b in batches])
        index = [int(k) for b in batches for k in b["key"]]
        labels = torch.cat([b["label"] for b in batches])
        images = tokenizer.decode(ids)
        assert torch.equal(images, torch.from_numpy(digits.images[index] / 16).float().unsqueeze(1))
        assert labels.tolist() == digits.target[index].tolist()
        if split == "val":
            assert np.bincount(labels.numpy()).tolist() == [18] * 10
        seen += index
    assert sorted(seen) == list(range(1797))
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_digits(digits_root)


def test_datamodule_reads_meta_and_splits_ranks(digits_root):
    dm = TokenShardDataModule(str(digits_root), batch_size=32, val_batch_size=50, num_workers=0, return_keys=True)
    assert (dm.codebook_size, dm.grid_size, dm.num_classes, dm.num_tokens) == (17, (8, 8), 10, 64)
    assert dm.tokenizer_config == {"name": "pixel", "levels": 17, "image_size": 8, "channels": 1}
    assert dm.meta.splits["val"].num_samples == 180
    batch = next(iter(TokenShardDataModule(str(digits_root), batch_size=32, num_workers=0).train_dataloader()))
    assert set(batch) == {"ids", "label"} and batch["ids"].shape == (32, 64) and batch["label"].shape == (32,)
    train_keys, val_keys = [], []
    for rank in range(2):
        dm = TokenShardDataModule(str(digits_root), batch_size=32, val_batch_size=50, num_workers=0, return_keys=True)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=3)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches) == 1617 // 64 and loader.dataset.epoch == 3
        train_keys += [k for b in batches for k in b["key"]]
        val_keys += [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(train_keys) == len(set(train_keys)) == 1617 // 64 * 64
    assert sorted(val_keys) == sorted(set(val_keys)) and len(val_keys) == 180


def test_datamodule_errors_and_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare") as err:
        TokenShardDataModule(str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing" / "meta.json") in str(err.value)
    with pytest.raises(ValueError, match="unknown preparation"):
        TokenShardDataModule(str(tmp_path), prepare="imagenet-by-magic")
    with pytest.raises(ValueError, match="cannot import lit_nat.demos.digits:NOPE"):
        TokenShardDataModule(str(tmp_path), prepare="lit_nat.demos.digits:NOPE")
    # a user's own preparation by import path: any function of the root that writes shards and meta.json last
    own = TokenShardDataModule(str(tmp_path / "own"), prepare="lit_nat.demos.digits:prepare_digits", num_workers=0)
    assert own.meta.num_classes == 10 and (tmp_path / "own" / "digits_classifier.pt").is_file()
    results, errors = [], []

    def build():  # several "ranks" at once: one prepares, the others wait for it
        try:
            results.append(TokenShardDataModule(str(tmp_path / "d"), prepare="digits", num_workers=0).meta)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 3 and results[0] == results[1] == results[2]
    dm = TokenShardDataModule(str(tmp_path / "d"), val_split="test", num_workers=0)
    with pytest.raises(ValueError, match="no split 'test'.*--data.val_split"):
        dm.val_dataloader()


def test_datamodule_in_a_trainer(digits_root):
    import lightning as L

    seen: list[list[str]] = []

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(17, 4)

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                seen.append([])
            seen[-1] += batch["key"]
            return self.emb(batch["ids"]).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val", self.emb(batch["ids"]).mean(), batch_size=len(batch["key"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TokenShardDataModule(str(digits_root), batch_size=100, num_workers=2, return_keys=True)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(Tiny(), dm)
    assert trainer.num_training_batches == 16 and [len(s) for s in seen] == [1600, 1600]
    assert seen[0] != seen[1]
    ref = TokenShardDataModule(str(digits_root), batch_size=100, num_workers=2, return_keys=True).train_dataloader()
    ref.epoch_fn = lambda: 1
    assert [k for b in ref for k in b["key"]] == seen[1]


def test_datamodule_hparams_are_plain_even_for_a_path_root(digits_root):
    data = TokenShardDataModule(digits_root, num_workers=0)  # a Path, not a str
    assert data.hparams.root == str(digits_root)  # loads under torch.load(weights_only=True)
