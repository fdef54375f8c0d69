"""Data sources, the held-out split, device-side augmentation and the dataset error messages."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision

from robust_ensembles.core.errors import ConfigError, DatasetNotFoundError
from robust_ensembles.data import CIFAR10DataModule, load_folder, random_crop, random_flip

CLASSES = ["bird", "airplane", "cat"]  # sorted: airplane=0, bird=1, cat=2


def _jpeg(value: int) -> bytes:
    img = torch.full((3, 32, 32), value, dtype=torch.uint8)
    return torchvision.io.encode_jpeg(img, quality=95).numpy().tobytes()


def make_archive(tmp_path: Path, per_class: int = 4, write_sums: bool = True) -> Path:
    """A tiny CIFAR-like .tar.gz: <top>/{train,test}/<class>/NNNN.jpg, class i filled with 40*(i+1)."""
    archive = tmp_path / "tiny-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for cls in CLASSES:
                for k in range(per_class):
                    data = _jpeg(40 * (sorted(CLASSES).index(cls) + 1))
                    info = tarfile.TarInfo(f"tiny-jpeg/{split}/{cls}/{k:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    if write_sums:
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        (tmp_path / "SHA256SUMS").write_text(f"{digest}  {archive.name}\n")
    return archive


def module(**kw) -> CIFAR10DataModule:
    args = dict(source="synthetic", root=None, cache_dir="/nonexistent", download=False, sha256=None, num_classes=4,
                normalization={}, val_size=8, split_seed=0, subset=None, test_subset=None, batch_size=4,
                eval_batch_size=8, augment={"crop_padding": 4, "flip": True}, num_workers=0,
                synthetic={"n_train": 40, "n_test": 12, "image_size": 32, "noise": 0.1, "seed": 0})
    return CIFAR10DataModule(**{**args, **kw})


def test_archive_is_verified_decoded_and_cached(tmp_path):
    archive = make_archive(tmp_path)
    data = load_folder(str(archive), str(tmp_path / "cache"), sha256=None)
    assert data["classes"] == sorted(CLASSES)
    assert data["train_x"].shape == (12, 3, 32, 32) and data["train_x"].dtype == torch.uint8
    # labels follow the alphabetical class order; class i was filled with 40*(i+1)
    means = [data["train_x"][data["train_y"] == i].float().mean().item() for i in range(3)]
    assert means == pytest.approx([40, 80, 120], abs=3)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = load_folder(str(archive), str(tmp_path / "cache"), sha256=None)  # from the cache
    assert torch.equal(again["test_x"], data["test_x"])


def test_unpacked_folder_reads_the_same(tmp_path):
    archive = make_archive(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    a = load_folder(str(archive), str(tmp_path / "cache"), sha256=None)
    b = load_folder(str(tmp_path / "unpacked"), str(tmp_path / "cache"), sha256=None)
    assert torch.equal(a["train_y"], b["train_y"]) and torch.equal(a["train_x"], b["train_x"])


def test_corrupt_archive_names_path_and_both_fixes(tmp_path):
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-100])  # truncated: hash no longer matches SHA256SUMS
    with pytest.raises(DatasetNotFoundError) as e:
        load_folder(str(archive), str(tmp_path / "cache"), sha256=None)
    msg = str(e.value)
    assert "corrupt" in msg and str(archive) in msg and "data.download=true" in msg and "data.root=" in msg


def test_missing_dataset_names_path_and_both_fixes(tmp_path):
    missing = tmp_path / "nowhere.tar.gz"
    with pytest.raises(DatasetNotFoundError) as e:
        load_folder(str(missing), str(tmp_path), sha256=None)
    assert str(missing) in str(e.value) and "download" in str(e.value) and "data.root" in str(e.value)


def test_torchvision_source_without_data_or_download_is_a_clear_error(tmp_path):
    dm = module(source="torchvision", root=str(tmp_path / "cifar"), download=False, num_classes=10)
    with pytest.raises(DatasetNotFoundError, match="data.root"):
        dm.setup("fit")


def test_validation_split_is_held_out_seeded_and_disjoint():
    a, b = module(), module()
    a.setup("fit"), b.setup("fit")
    assert len(a.splits["val"]) == 8 and len(a.splits["train"]) == 32
    assert torch.equal(a.splits["val"].x, b.splits["val"].x)  # same split_seed, same split
    c = module(split_seed=1)
    c.setup("fit")
    assert not torch.equal(a.splits["val"].x, c.splits["val"].x)
    train_rows = {tuple(r.flatten()[:64].tolist()) for r in a.splits["train"].x}
    assert not any(tuple(r.flatten()[:64].tolist()) in train_rows for r in a.splits["val"].x)


def test_subset_sizes_and_errors():
    dm = module(subset=10, test_subset=5)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 10 and len(dm.splits["test"]) == 5
    with pytest.raises(ConfigError, match="data.subset"):
        module(subset=100).setup("fit")
    with pytest.raises(ConfigError, match="data.source"):
        module(source="imagenet")
    with pytest.raises(ConfigError, match="data.batch_size"):
        module(batch_size=0)


def test_loader_yields_uint8_batches():
    dm = module()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.rand(64, 3, 8, 8)
    out = random_crop(x, padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    assert len({tuple(out[i, 0, 0, :2].tolist()) for i in range(64)}) > 1  # shifts differ per image


def test_random_flip_flips_about_half():
    x = torch.arange(8.0).view(1, 1, 1, 8).repeat(400, 3, 8, 1)
    out = random_flip(x)
    flipped = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.35 < flipped < 0.65
    assert torch.equal(out[out[:, 0, 0, 0] == 0], x[out[:, 0, 0, 0] == 0])


def test_a_data_root_with_generated_data_is_an_error_not_ignored():
    with pytest.raises(ConfigError, match="data.root=.*synthetic.*drop data.root"):
        module(root="/my/cifar")
