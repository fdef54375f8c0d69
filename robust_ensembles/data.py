"""CIFAR-10 as a LightningDataModule: images held in memory as uint8, augmented on the device.

Sources (`data.source`):
* `torchvision`: torchvision's `CIFAR10` class (downloads when `data.download=true`);
* `folder`: an ImageFolder-style tree (`<root>/train/<class>/*`, `<root>/test/<class>/*`) or a
  `.tar.gz` of one (e.g. `../shared/data/cifar10-jpeg-q75.tar.gz`). An archive is checked
  against its SHA256 and decoded once into a tensor file in `data.cache_dir`;
* `synthetic`: class-dependent random images, generated in memory (tests, smoke runs).

Batches leave the loader as uint8 and are converted to [0, 1] floats, randomly cropped and
flipped in `on_after_batch_transfer`, i.e. on the GPU when there is one, so the host never
bounds a GPU run. Validation is a fixed, seeded split of the training set (`data.val_size`,
`data.split_seed`): it chooses checkpoints and alphas; the test set is never used for that.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from robust_ensembles.core.errors import ConfigError, DatasetNotFoundError
from robust_ensembles.core.registry import stable_name

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "folder", "synthetic")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _fixes(root) -> str:
    return (
        f"Either download it (data=cifar10 data.download=true, needs internet), or point data.root "
        f"at the CIFAR-10 JPEG archive or its unpacked folder (data=cifar10_jpeg "
        f"data.root=/path/to/cifar10-jpeg-q75.tar.gz). Looked at: {root}"
    )


# ----------------------------------------------------------------------------- loading sources
def load_torchvision(root: str, download: bool) -> dict[str, torch.Tensor]:
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = torchvision.datasets.CIFAR10(root=root, train=train, download=download)
        except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted"; offline download
            raise DatasetNotFoundError(f"CIFAR-10 ({split}) not found or corrupt at {root} ({e}). {_fixes(root)}") from None
        out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.long)
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def expected_sha256(archive: Path, sha256: str | None) -> str | None:
    """The configured hash, else the archive's line in a `SHA256SUMS` file beside it."""
    if sha256:
        return sha256
    sums = archive.parent / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == archive.name:
                return parts[0]
    return None


def _decode_members(items) -> dict[str, torch.Tensor]:
    """items: iterable of (split, class_name, name, bytes). Labels are the sorted class names."""
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, cls, name, data in items:
        by_split[split].append((cls, name, data))
    classes = sorted({cls for rows in by_split.values() for cls, _, _ in rows})
    if not by_split["train"] or not by_split["test"]:
        raise DatasetNotFoundError("no images under train/<class>/ and test/<class>/")
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    for split, rows in by_split.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        images = [torchvision.io.decode_image(torch.frombuffer(bytearray(d), dtype=torch.uint8),
                                              mode=torchvision.io.ImageReadMode.RGB) for _, _, d in rows]
        out[f"{split}_x"] = torch.stack(images)
        out[f"{split}_y"] = torch.tensor([index[c] for c, _, _ in rows], dtype=torch.long)
    return out


def _tar_items(archive: Path):
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test") and m.name.lower().endswith(IMAGE_SUFFIXES):
                yield parts[-3], parts[-2], parts[-1], tar.extractfile(m).read()


def _find_split_root(root: Path) -> Path | None:
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _dir_items(root: Path):
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    yield split, cls_dir.name, f.name, f.read_bytes()


def load_folder(root: str, cache_dir: str, sha256: str | None) -> dict[str, torch.Tensor]:
    """Decode an image-folder tree or a .tar.gz of one, once, into a cached tensor file."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"CIFAR-10 not found: {path} does not exist. {_fixes(path)}")
    if path.is_dir():
        split_root = _find_split_root(path)
        if split_root is None:
            raise DatasetNotFoundError(f"{path} holds no train/<class>/ and test/<class>/ folders. {_fixes(path)}")
        return _decode_members(_dir_items(split_root))
    expected = expected_sha256(path, sha256)
    actual = sha256_of(path)
    if expected is None:
        log.warning("No SHA256 to verify %s against (set data.sha256 or put a SHA256SUMS beside it)", path)
    elif actual != expected:
        raise DatasetNotFoundError(f"CIFAR-10 archive {path} is corrupt: SHA256 {actual} != expected {expected}. {_fixes(path)}")
    cache = Path(cache_dir).expanduser() / f"{path.name.split('.')[0]}-{actual[:16]}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception as e:  # a torn or stale cache file is rebuilt, never trusted
            log.warning("Cache %s unreadable (%s); decoding the archive again", cache, e)
    log.info("Decoding %s into %s (once)", path, cache)
    try:
        data = _decode_members(_tar_items(path))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetNotFoundError(f"CIFAR-10 archive {path} is unreadable ({e}). {_fixes(path)}") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return data


def make_synthetic(n_train: int, n_test: int, num_classes: int, image_size: int, noise: float, seed: int) -> dict:
    """Each class is a fixed random template plus per-image noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(num_classes, 3, image_size, image_size, generator=g)
    out = {"classes": [f"class{i}" for i in range(num_classes)]}
    for split, n in (("train", n_train), ("test", n_test)):
        y = torch.arange(n) % num_classes
        x = templates[y] + noise * torch.randn(n, 3, image_size, image_size, generator=g)
        out[f"{split}_x"] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        out[f"{split}_y"] = y
    return out


# ----------------------------------------------------------------------------- augmentation
def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch (torchvision RandomCrop(padding=p)), vectorised."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # channels_last strides


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class _Batches(Dataset):
    """Indexing with a list of indices returns a whole batch: no per-image collation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx):
        return self.x[idx], self.y[idx]


@stable_name("cifar10")
class CIFAR10DataModule(pl.LightningDataModule):
    def __init__(
        self,
        source: str,
        root: str | None,
        cache_dir: str,
        download: bool,
        sha256: str | None,
        num_classes: int,
        normalization: dict,
        val_size: int,
        split_seed: int,
        subset: int | None,
        test_subset: int | None,
        batch_size: int,
        eval_batch_size: int,
        augment: dict,
        num_workers: int,
        device_resident: bool = False,
        test_split: str = "test",
        synthetic: dict | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is unknown; use one of {list(SOURCES)}.")
        if source == "synthetic" and root:
            raise ConfigError(f"data.root={root!r} is set (on the command line or in conf/local/default.yaml), but "
                              f"data.source=synthetic (data=synthetic, experiment=tiny) generates its images and reads no "
                              f"files; drop data.root, or train on the files with data=cifar10_jpeg (experiment=cpu).")
        for key, value in (("val_size", val_size), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is None or value < (0 if key == "val_size" else 1):
                raise ConfigError(f"data.{key}={value!r} must be a positive integer.")
        for key, value in (("subset", subset), ("test_subset", test_subset)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{key}={value!r} must be a positive integer or null (all images).")
        self.source, self.root, self.cache_dir, self.download, self.sha256 = source, root, cache_dir, download, sha256
        self.num_classes, self.normalization = num_classes, normalization
        self.val_size, self.split_seed, self.subset, self.test_subset = val_size, split_seed, subset, test_subset
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment, self.synthetic = augment, synthetic
        self.device_resident = device_resident
        if test_split not in ("test", "val"):
            raise ConfigError(f"evaluation.split={test_split!r} must be test or val.")
        self.test_split = test_split  # what trainer.test evaluates: the test set, or the validation split
        self.splits: dict[str, _Batches] = {}

    def load(self) -> dict:
        if self.source == "torchvision":
            return load_torchvision(self.root, self.download)
        if self.source == "folder":
            if not self.root:
                raise DatasetNotFoundError(f"data.root is not set. {_fixes(self.root)}")
            return load_folder(self.root, self.cache_dir, self.sha256)
        return make_synthetic(num_classes=self.num_classes, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.load()
        n_classes = int(data["train_y"].max()) + 1
        if n_classes != self.num_classes:
            raise ConfigError(f"data.num_classes={self.num_classes} but {self.root} holds {n_classes} classes.")
        n = len(data["train_y"])
        need = self.val_size + (self.subset or 1)
        if need > n:
            raise ConfigError(f"data.val_size={self.val_size} + data.subset={self.subset} exceed the {n} training images.")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size:]
        if self.subset:
            train_idx = train_idx[: self.subset]
        test_idx = torch.arange(len(data["test_y"]))
        if self.test_subset and self.test_subset < len(test_idx):
            test_idx = torch.randperm(len(test_idx), generator=torch.Generator().manual_seed(self.split_seed))[: self.test_subset]
        self.splits = {
            "train": _Batches(data["train_x"][train_idx], data["train_y"][train_idx]),
            "val": _Batches(data["train_x"][val_idx], data["train_y"][val_idx]),
            "test": _Batches(data["test_x"][test_idx], data["test_y"][test_idx]),
        }
        if self.device_resident:
            if torch.cuda.is_available():  # uint8 images on the GPU: batches are slices there
                self.splits = {k: _Batches(v.x.cuda(), v.y.cuda()) for k, v in self.splits.items()}
            else:
                log.info("data.device_resident=true but no CUDA device: images stay in host memory")
        log.info("data: %s", {k: len(v) for k, v in self.splits.items()})

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.splits[split]
        sampler = RandomSampler(ds) if shuffle else SequentialSampler(ds)
        return DataLoader(
            ds, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False),
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available() and ds.x.device.type == "cpu",
        )

    def train_dataloader(self):
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_split, self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        x = x.to(torch.float32) / 255
        if self.trainer is not None and self.trainer.training:
            if self.augment.get("crop_padding"):
                x = random_crop(x, self.augment["crop_padding"])
            if self.augment.get("flip"):
                x = random_flip(x)
        return x, y
