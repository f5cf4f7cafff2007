"""``import``: a poisoned training set made elsewhere, validated against the clean one.

``--poison import --poison-param path=PATH [--poison-param name=SOURCE]``, PATH one of:

* a ``.npz`` in the ``bench poison`` export format: ``x_train`` uint8 N x H x W x C, ``y_train``,
  ``poisoned_indices``, the training set in the dataset's order (a ``--train-subset`` export matches
  the preset whose subset it was made for);
* a folder holding ``train/<class>/<index>.png``: ``<class>`` a class name of the dataset or its
  label number, ``<index>`` the image's position in the clean training set, lossless PNG (RGB, or
  greyscale for one-channel data sets);
* a ``.pt`` / ``.pth`` file read with ``torch.load(weights_only=True)`` (never unpickled): an image
  tensor N x C x H x W or N x H x W x C, uint8 or float in [0, 1] (rounded to grey levels), or a
  dict with it under ``x_train`` / ``x`` / ``data`` and optional labels under ``y_train`` / ``y`` /
  ``targets`` / ``labels``.

The file holds either the run's training images or the dataset's whole training split (as poisons
are published, e.g. all 50k CIFAR-10 images); for a preset that trains on a subset of the split, a
whole-split file is cut to the subset's images (PNG folders: only those files are decoded), so one
export serves every preset.

What can be checked without the clean set (the file exists and reads, its layout, dtype and value
range) is checked when the run is set up, before any training; shape and labels against the clean
training set (same order, same labels) and, for an npz, that images outside its
``poisoned_indices`` are clean, before the poisoned run trains. Every failure is one line naming the
file. The poisoned index set is measured (the images that differ from the clean ones); the manifest
reports its L-inf, mean L2, PSNR and SSIM, and ``info`` the largest L2 and the L0 (pixels changed per
image). The file's sha256 is the poison's identity: it is in the cached artifact's id and in the run
record's ``config.poison.identity``, so an edited file is never served from the cache or matched to an
old record. ``name`` declares where the poison came from (default: the file's name).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import Poison, PoisonContext, PoisonedSet, SplitRows, exact_subset
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.io import read_npz
from benchmark.params import param
from benchmark.registry import register_poison

X_KEYS = ("x_train", "x", "data")
Y_KEYS = ("y_train", "y", "targets", "labels")
BAD_INDICES = "poisoned_indices must be 1-D integer indices into the training set"


@dataclass(frozen=True)
class ImportParams:
    path: str = param("", "a `bench poison` .npz export, a folder with train/<class>/<index>.png, or a .pt tensor "
                          "file (read with weights_only=True)")
    name: str = param("", "declared source of the poison, stored in the record (default: the file's name)")

    def validate(self, owner: str) -> None:
        if not self.path:
            raise BenchError(f"{owner}: needs --poison-param path=PATH (a `bench poison` .npz, a folder with "
                             f"train/<class>/<index>.png, or a .pt tensor file)")
        check_file(Path(self.path).expanduser())


def _fail(path: Path, what: str) -> BenchError:
    return BenchError(f"poison import: {path}: {' '.join(str(what).split())}")


def file_kind(path: Path) -> str:
    """'npz', 'pt' or 'png' (a folder), or a one-line error."""
    if not path.exists():
        raise _fail(path, "does not exist")
    if path.is_dir():
        if not (path / "train").is_dir():
            raise _fail(path, "a folder must hold train/<class>/<index>.png")
        return "png"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".pt", ".pth"):
        return "pt"
    raise _fail(path, "is not a .npz, .pt/.pth file or a folder with train/<class>/<index>.png")


def read_pt(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images and optional labels of a tensor file, loaded without unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _fail(path, f"not a plain tensor file (read with weights_only=True; pickled objects are never "
                          f"loaded): {first}") from None
    labels = None
    if isinstance(obj, dict):
        x_key = next((k for k in X_KEYS if k in obj), None)
        if x_key is None:
            raise _fail(path, f"holds a dict without images: expected one of {', '.join(X_KEYS)}, got "
                              f"{', '.join(map(str, obj)) or 'no keys'}")
        y_key = next((k for k in Y_KEYS if k in obj), None)
        x, labels = obj[x_key], obj.get(y_key) if y_key else None
    else:
        x = obj
    if not isinstance(x, torch.Tensor):
        raise _fail(path, f"holds {type(x).__name__}, not an image tensor")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() != 1
                               or labels.dtype.is_floating_point or labels.dtype == torch.bool):
        raise _fail(path, "labels must be a 1-D integer tensor")
    return x, labels


def check_file(path: Path) -> str:
    """The checks that need no clean set: the file reads, layout, dtype and value range."""
    kind = file_kind(path)
    if kind == "npz":
        arrays = read_npz(path, required=("x_train", "y_train", "poisoned_indices"))
        if arrays["x_train"].dtype != np.uint8 or arrays["x_train"].ndim != 4:
            raise _fail(path, f"x_train is {arrays['x_train'].dtype} with shape {arrays['x_train'].shape}; the "
                              f"`bench poison` format is uint8 N x H x W x C")
    elif kind == "pt":
        x, _ = read_pt(path)
        to_uint8(path, x)
    else:
        png_files(path)
    return kind


def to_uint8(path: Path, x: torch.Tensor) -> torch.Tensor:
    """uint8 images from a uint8 tensor or a float one in [0, 1] (rounded to grey levels)."""
    if x.dim() != 4:
        raise _fail(path, f"images must be a 4-D tensor (N x C x H x W or N x H x W x C), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.dtype.is_floating_point:
        raise _fail(path, f"images are {x.dtype}; expected uint8, or float in [0, 1]")
    xf = x.to(torch.float64)
    if not bool(torch.isfinite(xf).all()):
        raise _fail(path, "float images contain NaN or inf")
    lo, hi = float(xf.min()), float(xf.max())
    if lo < 0.0 or hi > 1.0:
        raise _fail(path, f"float images must lie in [0, 1], found values in [{lo:g}, {hi:g}]")
    return torch.round(xf * 255.0).to(torch.uint8)


def png_files(path: Path) -> list[tuple[str, int, Path]]:
    """(class folder, index, file) of every image under ``path/train``; layout errors are one line."""
    out = []
    for folder in sorted(p for p in (path / "train").iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            raise _fail(path, f"train/{folder.name} is not a class folder")
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() != ".png" or not f.stem.isdigit():
                raise _fail(path, f"train/{folder.name}/{f.name}: expected <index>.png (lossless PNG, the image's "
                                  f"index in the training set)")
            out.append((folder.name, int(f.stem), f))
    if not out:
        raise _fail(path, "train/ holds no <class>/<index>.png images")
    return out


def read_png_folder(path: Path, clean: ImageSet, rows: SplitRows | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images (N, C, H, W) and folder labels of a PNG export, in training-set order, and how many images
    the folder holds. A folder of the whole training split, for a run on a subset of it, is read at
    ``rows`` only."""
    from PIL import Image

    n, c, h, w = clean.x.shape
    names = {name: i for i, name in enumerate(clean.classes)}
    files = png_files(path)
    whole = rows is not None and len(files) == rows.split_size != n
    size = rows.split_size if whole and rows is not None else n
    position = list(range(n))  # index in the folder -> position in the clean set (-1: not trained on)
    if whole and rows is not None:
        position = [-1] * size
        for at, index in enumerate(rows.indices.tolist()):
            position[index] = at
    labels = torch.full((n,), -1, dtype=torch.long)
    order: list[Path | None] = [None] * n
    seen = bytearray(size)
    for folder, index, f in files:
        label = names.get(folder, int(folder) if folder.isdigit() else -1)
        if not 0 <= label < max(len(names), clean.num_classes):
            raise _fail(path, f"train/{folder} is not a class of the dataset (valid: {', '.join(clean.classes)} "
                              f"or 0..{clean.num_classes - 1})")
        if not 0 <= index < size:
            raise _fail(path, f"train/{folder}/{f.name}: index {index} is outside the training set (0..{size - 1})")
        if seen[index]:
            raise _fail(path, f"image index {index} appears twice (train/{folder}/{f.name})")
        seen[index] = 1
        if (at := position[index]) >= 0:
            order[at] = f
            labels[at] = label
    missing = [i for i, f in enumerate(order) if f is None]
    if missing:
        raise _fail(path, f"has {n - len(missing)} of the {n} training images; first missing index {missing[0]}")
    mode = {3: "RGB", 1: "L"}.get(c)

    def decode(f: Path) -> np.ndarray:
        with Image.open(f) as im:
            if im.format != "PNG" or im.mode != mode or im.size != (w, h):
                raise _fail(path, f"{f.relative_to(path)} is a {im.format} {im.mode} {im.size[0]}x{im.size[1]} image; "
                                  f"expected PNG {mode} {w}x{h}")
            return np.asarray(im)

    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(decode, order))  # type: ignore[arg-type]
    x = torch.from_numpy(np.stack(arrays).reshape(n, h, w, c)).permute(0, 3, 1, 2).contiguous()
    return x, labels, len(files)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a PNG folder's relative paths and bytes (sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in (path / "train").rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(f.read_bytes())
        return h.hexdigest()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cut_to_rows(path: Path, x: torch.Tensor, y: torch.Tensor | None, declared: torch.Tensor | None, n: int,
                rows: SplitRows | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A file of the whole training split, for a run on a subset of it (a preset's victim subset): its
    rows of those images, in the subset's order, and its declared poisoned indices (valid indices into the
    file) renumbered. Any other
    file is returned as it is (the shape check names what it should hold)."""
    if rows is None or len(x) == n or len(x) != rows.split_size:
        return x, y, declared
    if declared is not None:
        marked = torch.zeros(rows.split_size, dtype=torch.bool)
        marked[declared] = True
        declared = torch.nonzero(marked[rows.indices]).flatten()
    y = None if y is None else torch.as_tensor(y).flatten()[rows.indices]
    return x[rows.indices], y, declared


def check_against_clean(path: Path, x: torch.Tensor, y: torch.Tensor | None, clean: ImageSet,
                        layout: str = "nchw") -> torch.Tensor:
    """(N, C, H, W) uint8 images after the checks against the clean set: shape and labels in order."""
    n, c, h, w = clean.x.shape
    if layout == "nhwc" or (layout == "auto" and tuple(x.shape[1:]) == (h, w, c) and tuple(x.shape[1:]) != (c, h, w)):
        x = x.permute(0, 3, 1, 2)
    if tuple(x.shape) != (n, c, h, w):
        raise _fail(path, f"holds images of shape {tuple(x.shape)}; the clean training set is {n} x {c} x {h} x {w} "
                          f"(N x C x H x W), or the whole training split when a preset trains on a subset of it")
    if y is not None:
        yt = torch.as_tensor(y).to(torch.long).flatten()
        clean_y = clean.y.cpu()
        if yt.numel() != n:
            raise _fail(path, f"has {yt.numel()} labels for {n} images")
        wrong = torch.nonzero(yt != clean_y).flatten()
        if wrong.numel():
            i = int(wrong[0])
            raise _fail(path, f"labels differ from the clean training set's at {wrong.numel()} of {n} positions "
                              f"(first: index {i}, file {int(yt[i])}, clean {int(clean_y[i])}); the images must be "
                              f"in the dataset's order")
    return x.contiguous()


@register_poison("import", aliases=("imported",))
class Imported(Poison[ImportParams], budget_type="unbounded"):
    """A poisoned training set made elsewhere (.npz export, PNG folder or .pt tensors), validated."""

    preview_cheap = False  # only the file (or its cached artifact) can show it
    notes = ("Imported poisons are whatever the file holds: their budget is measured, not declared.",)

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._sha256: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.params.path).expanduser()

    def cache_identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return {"sha256": self._sha256}

    def load(self, clean: ImageSet, rows: SplitRows | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str, int]:
        """The file's images (N, C, H, W) uint8 checked against ``clean``, the indices it declares
        poisoned (npz), its kind and how many images it holds (a file of the whole training split is cut
        to ``rows``)."""
        path = self.path
        kind = file_kind(path)
        declared = None
        if kind == "npz":
            arrays = read_npz(path, required=("x_train", "y_train", "poisoned_indices"))
            x = torch.from_numpy(arrays["x_train"])
            if x.dtype != torch.uint8:
                raise _fail(path, f"x_train is {arrays['x_train'].dtype}; the `bench poison` format is uint8")
            idx = np.asarray(arrays["poisoned_indices"])
            held = len(x)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx.size and (idx.min() < 0 or idx.max() >= held)):
                raise _fail(path, BAD_INDICES)
            x, y, declared = cut_to_rows(path, x, torch.from_numpy(np.asarray(arrays["y_train"])),
                                         torch.from_numpy(idx.astype(np.int64)), len(clean), rows)
            x = check_against_clean(path, x, y, clean, layout="nhwc")
        elif kind == "pt":
            raw, labels = read_pt(path)
            held = len(raw)
            raw, labels, _ = cut_to_rows(path, raw, labels, None, len(clean), rows)
            x = check_against_clean(path, to_uint8(path, raw), labels, clean, layout="auto")
        else:
            x, labels, held = read_png_folder(path, clean, rows)
            x = check_against_clean(path, x, labels, clean)
        return x, declared, kind, held

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        path = self.path
        x, declared, kind, held = self.load(train, ctx.split_rows)
        clean = train.x.cpu()
        differs = (x != clean).flatten(1).any(1)
        if declared is not None:
            outside = differs.clone()
            outside[declared] = False
            if bool(outside.any()):
                raise _fail(path, f"changes {int(outside.sum())} image(s) outside its poisoned_indices")
        subset = exact_subset(len(train), ctx.ratio, ctx.key)
        keep = torch.zeros(len(train), dtype=torch.bool)
        keep[subset] = True
        x = torch.where(keep.view(-1, 1, 1, 1), x, clean)  # ratio < 1: the file's images on a seeded subset
        indices = torch.nonzero(differs & keep).flatten()
        changed_pixels = (x[indices] != clean[indices]).any(dim=1).flatten(1).sum(1).to(torch.float64)
        diff = (x[indices].to(torch.float64) - clean[indices].to(torch.float64)).flatten(1) / 255.0
        info = {
            "source_name": self.params.name or path.name,
            "format": kind,
            "sha256": self.cache_identity()["sha256"],
            "images": len(train),
            "file_images": held,
            "images_changed": int(indices.numel()),
            "declared_poisoned": None if declared is None else int(declared.numel()),
            "l0_max": int(changed_pixels.max()) if indices.numel() else 0,
            "l0_mean": round(float(changed_pixels.mean()), 3) if indices.numel() else 0.0,
            "l2_max": round(float(diff.norm(dim=1).max()), 6) if indices.numel() else 0.0,
        }
        return PoisonedSet(x.to(train.x.device), train.y.clone(), indices, info=info)
