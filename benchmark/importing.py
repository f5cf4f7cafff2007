"""Reading poisons in the formats their authors publish, for the ``import`` poison (attacks/imported.py).

Every reader returns the file's rows as they are (images, labels, declared poisoned rows, or a noise
tensor) after the checks that need no clean set; :func:`against_clean` then maps the file's rows onto
the run's images and checks them against the clean set: shape, labels over the whole file, declared
indices, and that rows declared clean are clean (or, when nearly all of them differ by a few grey
levels, that the file was made from another copy of the data set). Every failure is one line that names
the file and, where it is about one image, its file row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks.base import SplitRows
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.io import read_npz

X_KEYS = ("x_train", "x", "data")
Y_KEYS = ("y_train", "y", "targets", "labels")
TAP_IMAGES, TAP_LABELS = "poisoned_training_data.npy", "poisoned_training_labels.npy"
FOLDER_LAYOUTS = (f"train/<class>/<index>.png (class folders), data/<index>.png (AR, TAP --save poison_dataset, "
                  f"APBench) or {TAP_IMAGES} (TAP --save numpy)")
#: rows declared clean that differ: when at least this share of them (and ``MISMATCH_MIN_ROWS``) does, by a
#: mean of at most ``MISMATCH_MEAN_255`` grey levels, the file was made from another copy of the data set
#: (a lossy re-encoding changes every natural image by a few grey levels on average; unrelated images,
#: e.g. rows out of order, differ by tens)
MISMATCH_SHARE = 0.5
MISMATCH_MIN_ROWS = 10
MISMATCH_MEAN_255 = 12.0
CHUNK = 4096
NOISE_HINT = " (a published noise? add --poison-param noise=em, em-signed or rem)"


def fail(path: Path, what: str) -> BenchError:
    return BenchError(f"poison import: {path}: {' '.join(str(what).split())}")


@dataclass
class FileRows:
    """A file's content before the clean set is consulted. ``x``: images (numpy or torch, N x C x H x W
    or N x H x W x C; None for PNG folders, decoded later by row) or the noise tensor; ``labels`` and
    ``declared`` (poisoned rows) per file row, or None; ``pngs``: file of each row of a PNG folder."""

    kind: str
    count: int
    x: object = None
    labels: torch.Tensor | None = None
    declared: torch.Tensor | None = None
    pngs: dict[int, Path] | None = None


# ------------------------------------------------------------------------------------ what a path is

def file_kind(path: Path, noise: bool = False) -> str:
    """'npz', 'pt', 'npy', 'png' (class folders), 'png-flat' (data/<index>.png) or 'tap-numpy', or one line."""
    if not path.exists():
        raise fail(path, "does not exist")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        raise fail(path, "is a pickle, which is never loaded (it can run code). REM/SEM publish their noise and index "
                         "files as pickles of plain NumPy arrays: on a machine where you trust the file, read it "
                         "with the code that wrote it, write the array with numpy.save('noise.npy', array), and "
                         "import the .npy")
    if noise and (path.is_dir() or suffix not in (".pt", ".pth", ".npy")):
        raise fail(path, "a noise must be a .pt/.pth tensor file (EM's perturbation.pt) or a .npy array (REM's noise)")
    if path.is_dir():
        if (path / "train").is_dir():
            return "png"
        if (path / "data").is_dir() or any(p.suffix.lower() == ".png" for p in path.iterdir()):
            return "png-flat"
        if (path / TAP_IMAGES).is_file():
            return "tap-numpy"
        raise fail(path, f"a folder must hold {FOLDER_LAYOUTS}")
    kinds = {".npz": "npz", ".pt": "pt", ".pth": "pt", ".npy": "npy"}
    if suffix not in kinds:
        raise fail(path, f"is not a .npz, .pt/.pth or .npy file, or a folder with {FOLDER_LAYOUTS}")
    return kinds[suffix]


def file_sha256(path: Path, extra: Path | None = None) -> str:
    """sha256 of a file, or of a folder's relative paths and bytes (sorted); ``extra``: an index file."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files + ([extra] if extra is not None else []):
        h.update(str(f.relative_to(path) if path.is_dir() and f != extra else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ readers

def read_pt(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A tensor, or a dict with one under x_train / x / data and labels under y_train / y / targets /
    labels, loaded with ``torch.load(weights_only=True)``: pickled objects are never loaded."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise fail(path, f"not a plain tensor file (read with weights_only=True; pickled objects are never "
                         f"loaded): {first}") from None
    labels = None
    if isinstance(obj, dict):
        x_key = next((k for k in X_KEYS if k in obj), None)
        if x_key is None:
            raise fail(path, f"holds a dict without images: expected one of {', '.join(X_KEYS)}, got "
                             f"{', '.join(map(str, obj)) or 'no keys'}")
        y_key = next((k for k in Y_KEYS if k in obj), None)
        x, labels = obj[x_key], obj.get(y_key) if y_key else None
    else:
        x = obj
    if not isinstance(x, torch.Tensor):
        raise fail(path, f"holds {type(x).__name__}, not a tensor")
    return x, None if labels is None else as_labels(path, labels)


def read_npy(path: Path) -> np.ndarray:
    """An array from a .npy (never pickled objects), memory-mapped: TAP's float64 export is 1.2 GB."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise fail(path, f"not a readable .npy array (object arrays are never loaded): {exc}") from None


def as_labels(path: Path, labels: object) -> torch.Tensor:
    """1-D integer labels from an integer array or a float one of whole numbers (TAP saves float64)."""
    y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if y.dim() != 1 or y.dtype == torch.bool or (y.dtype.is_floating_point and not bool((y == y.round()).all())):
        raise fail(path, f"labels must be 1-D whole numbers, got {y.dtype} of shape {tuple(y.shape)}")
    return y.to(torch.long)


def check_index_file(path: Path) -> None:
    """An index file exists and is a .npy, .pt/.pth or .txt (a pickle gets the conversion one-liner)."""
    if not path.exists() or path.suffix.lower() in (".pkl", ".pickle"):
        file_kind(path)
    if path.suffix.lower() not in (".npy", ".pt", ".pth", ".txt"):
        raise fail(path, "an index file is a .npy, .pt or .txt of row numbers")


def read_indices(path: Path) -> torch.Tensor:
    """A partial poison's index file (.npy, .pt or whitespace-separated .txt): 1-D integer row numbers."""
    check_index_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        idx = torch.from_numpy(np.array(read_npy(path)))  # a copy: the memory map is read-only
    elif suffix == ".txt":
        try:
            idx = torch.from_numpy(np.loadtxt(path, dtype=np.int64, ndmin=1))
        except ValueError as exc:
            raise fail(path, f"an index file holds whole numbers: {exc}") from None
    else:
        idx, _ = read_pt(path)
    if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise fail(path, f"indices must be 1-D integers, got {idx.dtype} of shape {tuple(idx.shape)}")
    return idx.to(torch.long)


def png_index(path: Path, f: Path) -> int:
    if f.suffix.lower() != ".png" or not f.stem.isdigit():
        raise fail(path, f"{f.relative_to(path)}: expected <index>.png (lossless PNG named by the image's row in the "
                         f"training set)")
    return int(f.stem)


def class_folder_files(path: Path, clean: ImageSet) -> tuple[dict[int, Path], dict[int, int]]:
    """File and folder label of every image under ``path/train/<class>/<index>.png``."""
    names = {name: i for i, name in enumerate(clean.classes)}
    files, labels = {}, {}
    for folder in sorted(p for p in (path / "train").iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            raise fail(path, f"train/{folder.name} is not a class folder")
        label = names.get(folder.name, int(folder.name) if folder.name.isdigit() else -1)
        if not 0 <= label < max(len(names), clean.num_classes):
            raise fail(path, f"train/{folder.name} is not a class of the dataset (valid: {', '.join(clean.classes)} "
                             f"or 0..{clean.num_classes - 1})")
        for f in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            index = png_index(path, f)
            if index in files:
                raise fail(path, f"image index {index} appears twice ({files[index].relative_to(path)}, "
                                 f"{f.relative_to(path)})")
            files[index], labels[index] = f, label
    if not files:
        raise fail(path, "train/ holds no <class>/<index>.png images")
    return files, labels


def flat_files(path: Path) -> dict[int, Path]:
    """File of every image under ``path/data/<index>.png`` (or ``path/<index>.png``)."""
    root = path / "data" if (path / "data").is_dir() else path
    files = {png_index(path, f): f for f in sorted(root.iterdir()) if not f.name.startswith(".") and f.is_file()}
    if not files:
        raise fail(path, f"{root.relative_to(path.parent)} holds no <index>.png images")
    return files


def read_rows(path: Path, kind: str, clean: ImageSet, noise: bool = False) -> FileRows:
    """The file's rows after the checks that need no clean images: layout, dtype, range, names."""
    if noise:
        x = read_pt(path)[0] if kind == "pt" else read_npy(path)
        return FileRows("noise", int(x.shape[0]) if x.ndim else 0, x=x)
    if kind == "npz":
        arrays = read_npz(path, required=("x_train", "y_train"))
        x = arrays["x_train"]
        if x.dtype != np.uint8 or x.ndim != 4:
            raise fail(path, f"x_train is {x.dtype} with shape {x.shape}; the `bench poison` format is uint8 N x H x W x C")
        if "poisoned_indices" not in arrays:  # x_train/y_train alone: every row is a poisoned image
            return FileRows(kind, len(x), x=x, labels=as_labels(path, arrays["y_train"]))
        idx = np.asarray(arrays["poisoned_indices"])
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise fail(path, "poisoned_indices must be 1-D integer indices into the training set")
        return FileRows(kind, len(x), x=x, labels=as_labels(path, arrays["y_train"]),
                        declared=torch.from_numpy(idx.astype(np.int64)))
    if kind == "pt":
        x, labels = read_pt(path)
        return FileRows(kind, int(x.shape[0]) if x.dim() else 0, x=x, labels=labels)
    if kind in ("npy", "tap-numpy"):
        images = path / TAP_IMAGES if kind == "tap-numpy" else path
        x = read_npy(images)
        label_file = images.with_name(TAP_LABELS)
        labels = as_labels(label_file, np.array(read_npy(label_file))) if images.name == TAP_IMAGES and \
            label_file.is_file() else None
        return FileRows(kind, int(x.shape[0]) if x.ndim else 0, x=x, labels=labels)
    if kind == "png":
        files, labels = class_folder_files(path, clean)
        order = sorted(files)
        return FileRows(kind, len(files), labels=torch.tensor([labels[i] for i in order]), pngs=files)
    files = flat_files(path)
    return FileRows(kind, len(files), pngs=files)


# ------------------------------------------------------------------------------------ images

def layout_nchw(path: Path, x: object, shape: tuple[int, int, int], what: str = "images") -> object:
    """``x`` (numpy or torch) as N x C x H x W: it may be stored N x H x W x C (NumPy, PIL, TAP, REM)."""
    c, h, w = shape
    dims = tuple(x.shape[1:])
    if x.ndim == 4 and dims == (c, h, w):
        return x
    if x.ndim == 4 and dims == (h, w, c):
        return x.transpose(0, 3, 1, 2) if isinstance(x, np.ndarray) else x.permute(0, 3, 1, 2)
    raise fail(path, f"holds {what} of shape {tuple(x.shape)}; expected N x {c} x {h} x {w} or N x {h} x {w} x {c}")


def _rows_chunk(x: object, sel: torch.Tensor) -> torch.Tensor:
    part = x[sel.numpy()] if isinstance(x, np.ndarray) else x[sel]
    return torch.from_numpy(np.array(part)) if isinstance(part, np.ndarray) else part


def images_uint8(path: Path, x: object, rows: torch.Tensor) -> torch.Tensor:
    """The file's images at ``rows`` (N x C x H x W) as uint8: stored uint8, float in [0, 1] (rounded to
    grey levels), or float holding whole grey levels 0..255 (TAP's --save numpy keeps uint8 pixels as
    float64). A float file is read twice in chunks (its scale from all rows, then converted), so a 1.2 GB
    memory-mapped export is never in memory at once; a bad value is reported by its file row."""
    out = torch.empty((len(rows), *x.shape[1:]), dtype=torch.uint8)
    starts = range(0, len(rows), CHUNK)
    dtype = _rows_chunk(x, rows[:1]).dtype if len(rows) else torch.uint8
    if dtype == torch.uint8:
        for lo in starts:
            out[lo:lo + CHUNK] = _rows_chunk(x, rows[lo:lo + CHUNK])
        return out
    if not dtype.is_floating_point:
        raise fail(path, f"images are {dtype}; expected uint8, float in [0, 1], or float grey levels 0..255{NOISE_HINT}")
    lo_v, hi_v, whole = float("inf"), float("-inf"), True
    for lo in starts:
        part = _rows_chunk(x, rows[lo:lo + CHUNK])
        bad = ~torch.isfinite(part).flatten(1).all(1)
        if bool(bad.any()):
            raise fail(path, f"file row {int(rows[lo + int(bad.nonzero()[0])])} holds NaN or inf")
        lo_v, hi_v = min(lo_v, float(part.min())), max(hi_v, float(part.max()))
        whole = whole and bool((part == part.round()).all())
    unit = lo_v >= 0.0 and hi_v <= 1.0
    if not unit and (lo_v < 0.0 or hi_v > 255.0 or not whole):
        raise fail(path, f"float images must lie in [0, 1] or hold whole grey levels 0..255 (TAP --save numpy); "
                         f"found values in [{lo_v:g}, {hi_v:g}]{'' if whole else ', not whole numbers'}"
                         f"{NOISE_HINT if lo_v < 0 else ''}")
    for lo in starts:
        part = _rows_chunk(x, rows[lo:lo + CHUNK])
        out[lo:lo + CHUNK] = (torch.round(part.to(torch.float64) * 255.0) if unit else part).to(torch.uint8)
    return out


def check_png_headers(path: Path, files: list[Path], shape: tuple[int, int, int]) -> None:
    """Every file is a PNG of the clean images' size and mode (headers only, in threads; no decoding)."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    mode = {3: "RGB", 1: "L"}.get(c)

    def header(f: Path) -> str | None:
        try:
            with Image.open(f) as im:
                if im.format == "PNG" and im.mode == mode and im.size == (w, h):
                    return None
                return f"{f.relative_to(path)} is a {im.format} {im.mode} {im.size[0]}x{im.size[1]} image"
        except (UnidentifiedImageError, OSError):
            return f"{f.relative_to(path)} is not a readable image"

    with ThreadPoolExecutor(max_workers=4) as pool:
        bad = next((msg for msg in pool.map(header, files) if msg), None)
    if bad:
        raise fail(path, f"{bad}; expected PNG {mode} {w}x{h} (lossless, the clean images' size)")


def decode_pngs(path: Path, files: list[Path], shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode PNG files (in threads) into N x C x H x W uint8; each must be a PNG of the clean images' size."""
    from PIL import Image

    c, h, w = shape
    mode = {3: "RGB", 1: "L"}.get(c)

    def decode(f: Path) -> np.ndarray:
        with Image.open(f) as im:
            if im.format != "PNG" or im.mode != mode or im.size != (w, h):
                raise fail(path, f"{f.relative_to(path)} is a {im.format} {im.mode} {im.size[0]}x{im.size[1]} image; "
                                 f"expected PNG {mode} {w}x{h}")
            return np.asarray(im)

    if not files:
        return torch.empty((0, c, h, w), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(decode, files))
    return torch.from_numpy(np.stack(arrays).reshape(len(files), h, w, c)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------ against the clean set

@dataclass
class Reference:
    """The clean images a file's rows stand for: ``ref`` (the run's images, or the whole training split
    for a file of the whole split), ``run_rows`` (file row of each of the run's images) and ``checked``
    (file rows the checks against ``ref`` cover; ``ref`` row i stands for file row ``checked[i]``)."""

    ref: ImageSet
    run_rows: torch.Tensor
    checked: torch.Tensor
    #: the file row of each checked row, where it is not ``checked`` itself (a PNG folder checked on the run's rows)
    file_rows: torch.Tensor | None = None

    def row(self, i: int) -> int:
        """File row of checked row ``i`` (what messages name)."""
        return int((self.file_rows if self.file_rows is not None else self.checked)[i])


def reference(path: Path, count: int, clean: ImageSet, rows: SplitRows | None, what: str = "images",
              shape: tuple[int, ...] | None = None) -> Reference:
    """Which clean images a file of ``count`` rows stands for: the run's images, or the whole split."""
    n = len(clean)
    if count == n:
        return Reference(clean, torch.arange(n), torch.arange(n))
    if rows is not None and count == rows.split_size:
        if rows.split is not None:
            return Reference(rows.split, rows.indices, torch.arange(count))
        return Reference(clean, rows.indices, rows.indices)  # only the run's rows can be checked
    c, h, w = clean.x.shape[1:]
    whole = f" or {rows.split_size} (the whole training split)" if rows is not None and rows.split_size != n else ""
    held = f"{what} of shape {shape}" if shape is not None else what
    raise fail(path, f"holds {count} {held}; the clean training set is {n} x {c} x {h} x {w} (N x C x H x W), so "
                     f"a file holds {n}{whole} rows, or the whole training split when a preset trains on a subset of it")


def check_labels(path: Path, labels: torch.Tensor | None, ref: Reference, count: int) -> None:
    """The file's labels against the clean ones, over every row that has a clean counterpart."""
    if labels is None:
        return
    if labels.numel() != count:
        raise fail(path, f"has {labels.numel()} labels for {count} images")
    clean_y = ref.ref.y.cpu()
    wrong = torch.nonzero(labels[ref.checked] != clean_y).flatten()
    if wrong.numel():
        i = int(wrong[0])
        raise fail(path, f"labels differ from the clean training set's in {wrong.numel()} of {len(ref.checked)} file "
                         f"rows (first: file row {ref.row(i)}, file {int(labels[ref.checked[i]])}, clean "
                         f"{int(clean_y[i])}); the rows must be in the dataset's order")


def check_declared(path: Path, declared: torch.Tensor, count: int, what: str = "poisoned_indices") -> torch.Tensor:
    """Declared poisoned rows as a mask over the file's rows; each must be a row of the file."""
    bad = torch.nonzero((declared < 0) | (declared >= count)).flatten()
    if bad.numel():
        raise fail(path, f"{what} entry {int(bad[0])} is {int(declared[bad[0]])}, not a row of the file (0..{count - 1})")
    marked = torch.zeros(count, dtype=torch.bool)
    marked[declared] = True
    return marked


def check_clean_rows(path: Path, x_checked: torch.Tensor, ref: Reference, marked: torch.Tensor, source: str) -> None:
    """Rows declared clean must equal the clean images. When most of them differ by a few grey levels,
    the file was made from another copy of the data set: one line that says so and what to do."""
    keep = ~marked[ref.checked]
    positions = torch.nonzero(keep).flatten()
    if not positions.numel():
        return
    diff_mean = torch.zeros(len(positions), dtype=torch.float64)
    for lo in range(0, len(positions), CHUNK):
        sel = positions[lo:lo + CHUNK]
        d = x_checked[sel].to(torch.int16) - ref.ref.x[sel].cpu().to(torch.int16)
        diff_mean[lo:lo + CHUNK] = d.abs().flatten(1).to(torch.float64).mean(1)
    differs = diff_mean > 0
    k = int(differs.sum())
    if not k:
        return
    first = ref.row(int(positions[differs.nonzero()[0]]))
    mean = float(diff_mean[differs].mean())
    if k >= max(MISMATCH_SHARE * len(positions), MISMATCH_MIN_ROWS) and mean <= MISMATCH_MEAN_255:
        raise fail(path, f"{k} of the {len(positions)} images outside its poisoned_indices differ from the clean training "
                         f"set by {mean:.1f} grey levels on average (first: file row {first}): the file was made from "
                         f"another copy of the data set than the clean set here ({source + '; ' if source else ''}e.g. the "
                         f"original CIFAR-10 files against the JPEG copy), so its budget would measure that difference. Point --data-root "
                         f"at the copy it was made from (the original CIFAR-10: torchvision's cifar-10-batches-py/), or "
                         f"pass --poison-param clean_reference=other to train on it with its budget marked as not measured")
    raise fail(path, f"changes {k} image(s) outside its poisoned_indices (first: file row {first})")


# ------------------------------------------------------------------------------------ published noise

def check_float_noise(path: Path, t: torch.Tensor) -> None:
    """EM's perturbation.pt: float, finite, in [0, 1] pixel units (|noise| <= 1, e.g. 8/255)."""
    if not t.dtype.is_floating_point:
        raise fail(path, f"EM noise is float in [0, 1] pixel units (perturbation.pt), got {t.dtype}; int8 grey levels "
                         f"are REM's format: noise=rem")
    if not bool(torch.isfinite(t).all()):
        raise fail(path, "the noise holds NaN or inf")
    lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
    if lo < -1.0 or hi > 1.0:
        raise fail(path, f"EM noise is in [0, 1] pixel units (|noise| <= 1, e.g. 8/255); found values in "
                         f"[{lo:g}, {hi:g}]; grey-level noise is REM's format: noise=rem")


def check_level_noise(path: Path, t: torch.Tensor) -> None:
    """REM's noise: integer grey levels round(255 * delta) in the int8 range."""
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise fail(path, f"REM noise is int8 grey levels (round(255 * delta)), got {t.dtype}; a float noise in [0, 1] "
                         f"pixel units is EM's format: noise=em")
    lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
    if lo < -128 or hi > 127:
        raise fail(path, f"REM noise is int8 grey levels; found values in [{lo}, {hi}]")


def add_em(x: torch.Tensor, noise: torch.Tensor, low: float) -> torch.Tensor:
    n255 = noise.to(torch.float32).mul(255).clamp_(low, 255)
    return (x.to(torch.float32) + n255).clamp_(0, 255).to(torch.uint8)


def add_levels(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.int16) + noise.to(torch.int16)).clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class NoiseFormat:
    """How a repository publishes its noise (``check``) and how its dataset code adds it to the clean
    uint8 images (``add``); ``unit``: grey levels per unit of the stored noise."""

    check: Callable[[Path, torch.Tensor], None]
    add: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    unit: float


NOISE_FORMATS = {
    # HanxunH/Unlearnable-Examples, dataset.py PoisonCIFAR10: float32 noise * 255 clamped to [0, 255] (negative
    # noise becomes 0: that repository's issue #13), added to the float32 image, clipped, cast to uint8 (truncation)
    "em": NoiseFormat(check_float_noise, lambda x, n: add_em(x, n, 0.0), 255.0),
    # the same noise clamped to [-255, 255]: how AR's UnlearnablePoison reads EM's perturbation.pt, and what #13
    # says was meant
    "em-signed": NoiseFormat(check_float_noise, lambda x, n: add_em(x, n, -255.0), 255.0),
    # fshp971/robust-unlearnable-examples and SEM, utils/generic.py: int8 levels added in int16, clipped, uint8
    "rem": NoiseFormat(check_level_noise, add_levels, 1.0),
}


def check_noise(path: Path, noise: object, fmt: str) -> torch.Tensor:
    """The whole noise tensor's dtype and range for ``fmt``, as a torch tensor."""
    t = torch.from_numpy(np.array(noise)) if isinstance(noise, np.ndarray) else noise  # a copy of the memory map
    NOISE_FORMATS[fmt].check(path, t)
    return t


def add_noise(x: torch.Tensor, noise: torch.Tensor, fmt: str) -> torch.Tensor:
    """Clean uint8 images plus a repository's published noise, in that repository's arithmetic
    (:data:`NOISE_FORMATS`), in chunks of ``CHUNK`` images."""
    add = NOISE_FORMATS[fmt].add
    out = torch.empty_like(x)
    for lo in range(0, len(x), CHUNK):
        out[lo:lo + CHUNK] = add(x[lo:lo + CHUNK], noise[lo:lo + CHUNK])
    return out
