"""Datasets as uint8 tensors (N, C, H, W): decoded once, cached as npz (or, for big sets, memory-mapped
``.npy`` files: benchmark/store.py), loaded in well under a second.

Sources, in order: torchvision's own files under the data root; the offline copies laid out like the
project's ``shared/data`` folder (``cifar10-jpeg/cifar10-jpeg.tar.gz``, ``fashion-mnist/*.gz``);
torchvision download when the user passes ``--download``. ``imagefolder:PATH`` reads any folder of
class sub-folders.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import BenchError
from benchmark.registry import DATASETS, register_dataset
from benchmark.store import Images, Pending, cached

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class ImageSet:
    """A labelled image set: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,). A big dataset's ``x`` is a
    memory map of its decode cache (benchmark/store.py): ``subset`` and batches gather only their rows."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"ImageSet.x must be uint8 (N,C,H,W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError("ImageSet.y must have one label per image")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.y.max()) + 1

    def subset(self, indices: torch.Tensor | np.ndarray) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.x[idx], self.y[idx], list(self.classes))

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device), list(self.classes))


@dataclass
class Dataset:
    """Train and test split of one dataset plus where it came from (recorded in every run)."""

    name: str
    source: str
    train: ImageSet
    test: ImageSet
    digest: str = ""  # content hash of the decoded training images and labels (see poison_dataset_id)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]


# ----------------------------------------------------------------------------------------- caching

def _encode_names(names: list[str]) -> np.ndarray:
    """Class names as a uint8 array (JSON bytes), so the npz cache holds them without pickle."""
    return np.frombuffer(json.dumps(names).encode(), dtype=np.uint8).copy()


def _decode_names(blob: np.ndarray) -> list[str]:
    return list(json.loads(bytes(blob.astype(np.uint8)).decode()))


def _to_dataset(name: str, source: str, arrays: dict[str, np.ndarray], classes: list[str]) -> Dataset:
    # a memory map stays one: np.ascontiguousarray and torch.from_numpy share its pages (no copy)
    def mk(split: str) -> ImageSet:
        return ImageSet(torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}"])),
                        torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)), list(classes))

    digest = bytes(arrays["digest"].astype(np.uint8)).decode() if "digest" in arrays else ""
    return Dataset(name, source, mk("train"), mk("test"), digest)


def poison_dataset_id(data: Dataset, train: ImageSet, train_subset: int, subset_seed: int) -> dict[str, Any]:
    """What a cached poison artifact was made from: dataset, source, content digest and subset. The
    digest makes an edited image folder (or replaced dataset files) miss the cache instead of reusing
    a poison of the old images."""
    return {"name": data.name, "source": data.source, "digest": data.digest, "train_size": len(train),
            "train_subset": train_subset, "subset_seed": subset_seed}


# ---------------------------------------------------------------------------------------- decoding

#: an image to decode: its name (for errors) and its bytes, or the file to read them from when decoded
Item = tuple[str, bytes | Path]


def _decode(item: Item, mode: str | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    name, blob = item
    try:
        data = blob.read_bytes() if isinstance(blob, Path) else blob
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(mode) if mode else im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise BenchError(f"cannot read image {name}: not a known image format, or the file is corrupt") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read image {name}: {getattr(exc, 'strerror', None) or exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(items: list[Item], mode: str | None, first: tuple[int, ...]) -> np.ndarray:
    """Decode images in a thread pool (Pillow releases the GIL); all must have the shape ``first``."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(lambda it: _decode(it, mode), items, chunksize=256))
    for (name, _), arr in zip(items, arrays, strict=True):
        if arr.shape != first:
            raise BenchError(f"image {name} has shape {arr.shape}, expected {first} like the first image; "
                             "resize the folder to one size")
    return np.stack(arrays)


def _lazy_images(items: list[Item], mode: str | None) -> Pending:
    """The images of ``items`` (in order), decoded chunk by chunk when the cache asks for them; the
    first is decoded now for the shape every other image must have."""
    if not items:
        return Pending(0, (3, 1, 1), lambda lo, hi: np.zeros((0, 3, 1, 1), np.uint8))
    first = _decode(items[0], mode).shape
    return Pending(len(items), first, lambda lo, hi: _decode_all(items[lo:hi], mode, first))


def _folder_mode(sample: Item) -> str:
    from PIL import Image, UnidentifiedImageError

    name, blob = sample
    try:
        with Image.open(blob if isinstance(blob, Path) else io.BytesIO(blob)) as im:
            return "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
    except (UnidentifiedImageError, OSError) as exc:
        raise BenchError(f"cannot read image {name}: {exc}") from None


def _split_items(entries: list[tuple[str, str, bytes | Path]], classes: list[str], mode: str) -> tuple[Pending, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (index[e[0]], e[1]))
    x = _lazy_images([(e[1], e[2]) for e in entries], mode)
    y = np.array([index[e[0]] for e in entries], dtype=np.int64)
    return x, y


def decode_image_tar(path: Path) -> tuple[dict[str, Images], list[str]]:
    """Decode a tar of ``{train,test}/<class>/<image>`` (the offline CIFAR-10 copy's layout)."""
    entries: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                parts = Path(member.name).parts
                if len(parts) < 3 or parts[-3] not in entries:
                    continue
                blob = tar.extractfile(member).read()  # type: ignore[union-attr]
                entries[parts[-3]].append((parts[-2], f"{path}:{member.name}", blob))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BenchError(f"cannot read dataset archive {path}: {exc}") from None
    classes = sorted({e[0] for e in entries["train"]})
    if not classes or not entries["test"]:
        raise BenchError(f"dataset archive {path} has no train/<class>/ and test/<class>/ images")
    mode = _folder_mode(entries["train"][0][1:])
    x_tr, y_tr = _split_items(entries["train"], classes, mode)
    x_te, y_te = _split_items(entries["test"], classes, mode)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, classes


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (MNIST format) without torchvision."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise BenchError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BenchError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


# ---------------------------------------------------------------------------------------- loaders

def _missing(name: str, root: Path, offline: str) -> BenchError:
    return BenchError(
        f"{name} not found under data root '{root}': pass --download to fetch it with torchvision, "
        f"or --data-root DIR (or $BENCH_DATA_ROOT) pointing at a folder with {offline}"
    )


def _check_root(root: Path) -> None:
    if not root.exists():
        return  # absent roots are fine with --download; loaders report what is missing
    if not root.is_dir():
        raise BenchError(f"data root '{root}' is not a directory")
    try:
        next(iter(root.iterdir()), None)
    except OSError as exc:
        raise BenchError(f"data root '{root}' is not readable: {exc.strerror}") from None


def _torchvision_arrays(ds_train, ds_test) -> dict[str, np.ndarray]:
    def conv(ds) -> tuple[np.ndarray, np.ndarray]:
        data = np.asarray(ds.data)
        labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
        if data.ndim == 3:
            data = data[:, None]
        elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
            data = data.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(data.astype(np.uint8)), labels

    x_tr, y_tr = conv(ds_train)
    x_te, y_te = conv(ds_test)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


@register_dataset("cifar10")
def load_cifar10(spec: str, root: Path, cache: Path, download: bool) -> Dataset:
    """CIFAR-10 (10 classes, 32x32 RGB): torchvision files, the offline JPEG copy, or download."""
    tv_dir = root / "cifar-10-batches-py"
    jpeg_tar = root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if tv_dir.is_dir() or (download and not jpeg_tar.exists()):
        from torchvision.datasets import CIFAR10

        # torchvision verifies the batches' MD5 sums before reading them, so only the official,
        # known files are ever unpickled.
        try:
            arrays = cached(cache, "cifar10-torchvision", [tv_dir] if tv_dir.exists() else [root], lambda: _torchvision_arrays(
                CIFAR10(str(root), train=True, download=download), CIFAR10(str(root), train=False, download=download)))
        except RuntimeError as exc:
            raise BenchError(f"CIFAR-10 under '{root}': {exc}") from None
        return _to_dataset("cifar10", "torchvision", arrays, CIFAR10_CLASSES)
    if jpeg_tar.is_file():
        def build() -> dict[str, Images]:
            arrays, classes = decode_image_tar(jpeg_tar)
            if classes != sorted(CIFAR10_CLASSES):
                raise BenchError(f"{jpeg_tar} has classes {classes}, expected the 10 CIFAR-10 classes")
            return arrays

        return _to_dataset("cifar10", "cifar10-jpeg", cached(cache, "cifar10-jpeg", [jpeg_tar], build),
                           sorted(CIFAR10_CLASSES))
    raise _missing("CIFAR-10", root, "cifar-10-batches-py/ or cifar10-jpeg/cifar10-jpeg.tar.gz")


@register_dataset("cifar100")
def load_cifar100(spec: str, root: Path, cache: Path, download: bool) -> Dataset:
    """CIFAR-100 (100 classes, 32x32 RGB) through torchvision."""
    from torchvision.datasets import CIFAR100

    tv_dir = root / "cifar-100-python"
    if not (tv_dir.is_dir() or download):
        raise _missing("CIFAR-100", root, "cifar-100-python/")

    def build() -> dict[str, np.ndarray]:
        # torchvision's constructor re-checks MD5 sums and re-reads every file: only on a cache miss
        try:
            train = CIFAR100(str(root), train=True, download=download)
            test = CIFAR100(str(root), train=False, download=download)
        except RuntimeError as exc:
            raise BenchError(f"CIFAR-100 under '{root}': {exc}") from None
        return dict(_torchvision_arrays(train, test), classes=_encode_names(list(train.classes)))

    arrays = cached(cache, "cifar100-torchvision", [tv_dir] if tv_dir.exists() else [root], build)
    return _to_dataset("cifar100", "torchvision", arrays, _decode_names(arrays["classes"]))


@register_dataset("svhn")
def load_svhn(spec: str, root: Path, cache: Path, download: bool) -> Dataset:
    """SVHN (10 digits, 32x32 RGB) through torchvision (train + test .mat files)."""
    from torchvision.datasets import SVHN

    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if not (all(f.is_file() for f in files) or download):
        raise _missing("SVHN", root, "train_32x32.mat and test_32x32.mat")

    def build() -> dict[str, np.ndarray]:
        try:  # only on a cache miss: the constructor re-checks and re-reads both .mat files
            train = SVHN(str(root), split="train", download=download)
            test = SVHN(str(root), split="test", download=download)
        except RuntimeError as exc:
            raise BenchError(f"SVHN under '{root}': {exc}") from None
        return _torchvision_arrays(train, test)

    arrays = cached(cache, "svhn-torchvision", files if all(f.is_file() for f in files) else [root], build)
    return _to_dataset("svhn", "torchvision", arrays, [str(i) for i in range(10)])


@register_dataset("fashion-mnist", aliases=("fashionmnist", "fmnist"))
def load_fashion_mnist(spec: str, root: Path, cache: Path, download: bool) -> Dataset:
    """Fashion-MNIST (10 classes, 28x28 grey): IDX files from torchvision's folder or the offline copy."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    candidates = [(root / "FashionMNIST" / "raw", "torchvision"), (root / "fashion-mnist", "fashion-mnist-idx")]
    found = next(((folder, src) for folder, src in candidates if all((folder / n).is_file() for n in names)), None)
    if found is not None:
        files, source = [found[0] / n for n in names], found[1]
    else:
        if not download:
            raise _missing("Fashion-MNIST", root, "fashion-mnist/*.gz or FashionMNIST/raw/*.gz")
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except RuntimeError as exc:
            raise BenchError(f"Fashion-MNIST download failed: {exc}") from None
        files = [root / "FashionMNIST" / "raw" / n for n in names]
        source = "torchvision"

    def build() -> dict[str, np.ndarray]:
        xtr, ytr, xte, yte = (read_idx_gz(f) for f in files)
        return {"x_train": xtr[:, None].copy(), "y_train": ytr.astype(np.int64),
                "x_test": xte[:, None].copy(), "y_test": yte.astype(np.int64)}

    return _to_dataset("fashion-mnist", source, cached(cache, "fashion-mnist", files, build), FASHION_CLASSES)


def _list_class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(folder: Path) -> list[tuple[str, str, Path]]:
    """(class, name, file) of every image; the bytes are read when the image is decoded, so a big
    folder is never in memory at once, not even compressed."""
    return [(cls.name, str(f), f) for cls in _list_class_folders(folder) for f in sorted(cls.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@register_dataset("imagefolder:")
def load_imagefolder(spec: str, root: Path, cache: Path, download: bool) -> Dataset:
    """Your own images: PATH/train and PATH/test with one sub-folder per class (sorted names =
    labels), or PATH with class folders directly, split 80/20 per class by a fixed seed."""
    given = spec.split(":", 1)[1]
    if not given.strip():
        raise BenchError("--dataset imagefolder: needs a folder, e.g. imagefolder:./my-images")
    path = Path(given).expanduser()
    if not path.is_dir():
        raise BenchError(f"image folder '{path}' does not exist or is not a directory")
    has_split = (path / "train").is_dir() and (path / "test").is_dir()
    sources = sorted(p for p in path.rglob("*") if p.is_file())
    if not sources:
        raise BenchError(f"image folder '{path}' contains no images")

    def build() -> dict[str, Images]:
        if has_split:
            train, test = _read_folder(path / "train"), _read_folder(path / "test")
            classes = [p.name for p in _list_class_folders(path / "train")]
            if [p.name for p in _list_class_folders(path / "test")] != classes:
                raise BenchError(f"image folder '{path}': train/ and test/ must have the same class folders")
        else:
            entries = _read_folder(path)
            classes = [p.name for p in _list_class_folders(path)]
            rng = np.random.default_rng(HOLDOUT_SEED)
            train, test = [], []
            for c in classes:
                items = [e for e in entries if e[0] == c]
                order = rng.permutation(len(items))
                n_test = max(1, int(round(HOLDOUT_FRACTION * len(items)))) if len(items) > 1 else 0
                test += [items[i] for i in order[:n_test]]
                train += [items[i] for i in order[n_test:]]
        if not train or not classes:
            raise BenchError(f"image folder '{path}' has no class sub-folders with images")
        if len(classes) < 2:
            raise BenchError(f"image folder '{path}' has one class ({classes[0]}); a classification "
                             "benchmark needs at least two class sub-folders")
        mode = _folder_mode(train[0][1:])
        x_tr, y_tr = _split_items(train, classes, mode)
        x_te, y_te = _split_items(test, classes, mode) if test else (x_tr.empty(), y_tr[:0])
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te,
                "classes": np.array(classes, dtype=np.str_)}

    arrays = cached(cache, "imagefolder", sources, build)
    classes = [str(c) for c in arrays["classes"]]
    if len(classes) < 2:
        raise BenchError(f"image folder '{path}' has one class ({classes[0]}); a classification benchmark "
                         "needs at least two class sub-folders")
    return _to_dataset(f"imagefolder:{path}", "imagefolder", arrays, classes)


def load_dataset(name: str, data_root: Path, cache: Path, download: bool = False) -> Dataset:
    """Look up ``name`` in the dataset registry and load it (cached)."""
    loader = DATASETS.get(name)
    _check_root(data_root)
    return loader(name, data_root, cache, download)


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices (sorted) of a seeded subset of ``n`` images with classes as balanced as possible."""
    total = int(y.shape[0])
    if n >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per_class = [torch.nonzero(y == c).flatten() for c in classes]
    quota = [n * len(ix) // total for ix in per_class]
    # hand out the remainder one image at a time, largest classes first (deterministic)
    order = sorted(range(len(per_class)), key=lambda i: -len(per_class[i]))
    k = 0
    while sum(quota) < n:
        i = order[k % len(order)]
        if quota[i] < len(per_class[i]):
            quota[i] += 1
        k += 1
    chosen = [ix[torch.randperm(len(ix), generator=gen)[:q]] for ix, q in zip(per_class, quota, strict=True)]
    return torch.sort(torch.cat(chosen)).values


def victim_indices(train: ImageSet, proto: Any) -> torch.Tensor:
    """Indices, into a training split, of the images a protocol's victims train on (its fixed
    stratified ``train_subset``, or all): the one place runs, ``bench poison``, pretraining (which must
    stay disjoint from them) and the report select the victim subset."""
    if proto.train_subset:
        return stratified_subset(train.y, proto.train_subset, proto.subset_seed)
    return torch.arange(len(train))


def dataset_names() -> list[str]:
    return DATASETS.names()
