"""The decode cache of a dataset: one npz for small sets, memory-mapped ``.npy`` files for big ones.

Up to :data:`MMAP_BYTES` of training images (every dataset up to Tiny-ImageNet) the decoded arrays
live in one uncompressed npz that is read into memory, as they always have. Above it (ImageNet-100 at
224 px is ~19 GB) the images are decoded in chunks and streamed into plain ``.npy`` files, which are
loaded as memory maps: neither the decode nor a run holds the whole training set in memory, and a
subset or a batch (``x[idx]``) reads only its own rows. ``$BENCH_MMAP_BYTES`` overrides the threshold
(0 puts every dataset in the store).

The maps are opened copy-on-write (``mmap_mode="c"``): the tensors are writable like in-memory ones
(so torch needs no warning about read-only memory), and a write would land in private pages of the
process, never in the cache file. Nothing in the pipeline writes a dataset's images in place: poisons
and defenses return new tensors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import BenchError
from benchmark.io import atomic_write, read_npz, write_npz
from benchmark.locks import load_or_make

#: training images (bytes) above which a dataset is decoded into the memory-mapped store
MMAP_BYTES = 2 * 1024**3
MMAP_ENV = "BENCH_MMAP_BYTES"
#: the image arrays the store keeps as ``.npy`` memory maps; everything else goes into its small npz
MAPPED = ("x_train", "x_test")
CHUNK_BYTES = 64 * 1024**2  # images decoded, written and hashed per step


def mmap_threshold() -> int:
    """Bytes of training images above which the store is used (``$BENCH_MMAP_BYTES`` or MMAP_BYTES)."""
    raw = os.environ.get(MMAP_ENV, "").strip()
    if not raw:
        return MMAP_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BenchError(f"${MMAP_ENV} must be a whole number of bytes >= 0, got '{raw}'")
    return value


@dataclass
class Pending:
    """A split's images not decoded yet: ``decode(lo, hi)`` returns images lo..hi-1, uint8 (k, C, H, W).
    Decoding in chunks lets a big folder go straight to disk without ever being one array in memory."""

    count: int
    image_shape: tuple[int, ...]
    decode: Callable[[int, int], np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.image_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def empty(self) -> Pending:
        """No images, of this split's image shape."""
        return Pending(0, self.image_shape, self.decode)

    def materialise(self) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for lo, part in row_chunks(self):
            out[lo:lo + len(part)] = part
        return out


Images = np.ndarray | Pending


def row_chunks(x: Images) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, C-contiguous rows) of ``x`` in chunks of about CHUNK_BYTES: decoded on demand for
    a Pending, slices (no copy for a contiguous array or memory map) otherwise."""
    n = x.shape[0]
    row = max(1, int(np.prod(x.shape[1:])) * (1 if isinstance(x, Pending) else x.itemsize))
    step = max(1, CHUNK_BYTES // row)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        yield lo, np.ascontiguousarray(x.decode(lo, hi) if isinstance(x, Pending) else x[lo:hi])


def _hash_labels(h: Any, y: np.ndarray) -> np.ndarray:  # h: a hashlib hash (its class is private)
    h.update(np.ascontiguousarray(y.astype(np.int64)).data)
    return np.frombuffer(h.hexdigest()[:16].encode(), dtype=np.uint8).copy()


def train_digest(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SHA-256 (first 16 hex digits, as uint8 bytes) of the training images' bytes (C order) then the
    labels as int64: hashed in chunks, so a memory-mapped set is never read into memory at once."""
    h = hashlib.sha256()
    for _, part in row_chunks(x):
        h.update(part.data)
    return _hash_labels(h, y)


def file_token(paths: list[Path]) -> str:
    """Cheap identity of source files (path, size, mtime) for the decode cache key."""
    h = hashlib.sha256()
    for p in sorted(paths):
        if not p.exists():  # e.g. a root that --download is about to create
            h.update(f"{p.resolve()}|missing".encode())
            continue
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------- memory-mapped store

def write_npy(path: Path, x: Images, update: Callable[[memoryview], None] | None = None) -> None:
    """A uint8 ``.npy`` written chunk by chunk through a file handle (atomic); ``update`` sees its bytes.
    Plain writes rather than a writable memory map keep the written pages out of this process's RSS."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": tuple(int(s) for s in x.shape)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for _, part in row_chunks(x):
                if part.dtype != np.uint8:
                    raise ValueError(f"{path.name}: expected uint8 images, got {part.dtype}")
                fh.write(part.data)
                if update is not None:
                    update(part.data)

    atomic_write(path, write)


def open_npy(path: Path) -> np.ndarray:
    """A copy-on-write memory map of a uint8 ``.npy``; a corrupt or truncated file is a BenchError."""
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
        size = path.stat().st_size
    except (OSError, ValueError, EOFError) as exc:
        raise BenchError(f"corrupt or unreadable array file {path}: {exc}") from None
    if not isinstance(arr, np.memmap) or arr.dtype != np.uint8 or arr.ndim != 4 or size != arr.offset + arr.nbytes:
        raise BenchError(f"corrupt array file {path}: not a complete uint8 (N,C,H,W) array")
    return arr


def _small_file(folder: Path) -> Path:
    return folder / "arrays.npz"


def write_store(folder: Path, arrays: Mapping[str, Images]) -> None:
    """The images as ``.npy`` files and the rest (labels, class names, digest) in ``arrays.npz``,
    written last: a folder without it is incomplete and is rebuilt. The training digest is hashed
    while the images are written (one pass over a decode)."""
    h = hashlib.sha256()
    for key in MAPPED:
        write_npy(folder / f"{key}.npy", arrays[key], h.update if key == "x_train" else None)
    small = {k: v for k, v in arrays.items() if k not in MAPPED}
    small["digest"] = _hash_labels(h, small["y_train"])
    write_npz(_small_file(folder), small)  # type: ignore[arg-type]


def read_store(folder: Path) -> dict[str, np.ndarray]:
    """The store's arrays, the images as memory maps; a BenchError if any file is corrupt or missing."""
    arrays = read_npz(_small_file(folder), required=("y_train", "y_test", "digest"))
    for key in MAPPED:
        arrays[key] = open_npy(folder / f"{key}.npy")
        split = key.split("_", 1)[1]
        if arrays[key].shape[0] != arrays[f"y_{split}"].shape[0]:
            raise BenchError(f"corrupt dataset store {folder}: {key} and y_{split} differ in length")
    return arrays


def _discard_store(folder: Path) -> None:
    for name in (_small_file(folder).name, *(f"{key}.npy" for key in MAPPED)):
        (folder / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- the cache

def cached(cache: Path, tag: str, sources: list[Path], build: Callable[[], Mapping[str, Images]]) -> dict[str, np.ndarray]:
    """Decoded arrays from the cache, or ``build()`` them and cache them with the training set's digest.

    A store (``<tag>-<token>.mmap/``) or an npz (``<tag>-<token>.npz``) already there is used, whichever
    exists; a fresh build goes to the store when its training images exceed :func:`mmap_threshold`.
    A corrupt cache of either kind is rebuilt, not fatal. One process decodes at a time
    (:func:`benchmark.locks.load_or_make`); the others wait and read what it wrote."""
    limit = mmap_threshold()  # a bad $BENCH_MMAP_BYTES fails before any decoding
    stem = cache / "datasets" / f"{tag}-{file_token(sources)}"
    store, path = Path(f"{stem}.mmap"), Path(f"{stem}.npz")
    return load_or_make(path, f"the decoded dataset {stem.name}", lambda: _read_cached(store, path),
                        lambda: _build(store, path, build, limit))


def _read_cached(store: Path, path: Path) -> dict[str, np.ndarray] | None:
    """The store's or the npz's arrays, or None when neither is there (a corrupt one is removed)."""
    if _small_file(store).exists():
        try:
            return read_store(store)
        except BenchError:
            _discard_store(store)
    if path.exists():
        try:
            arrays = read_npz(path, required=("x_train", "y_train", "x_test", "y_test"))
        except BenchError:
            path.unlink(missing_ok=True)
        else:
            if "digest" not in arrays:  # a cache written before digests existed: add it once
                arrays["digest"] = train_digest(arrays["x_train"], arrays["y_train"])
                write_npz(path, arrays)
            return arrays
    return None


def _build(store: Path, path: Path, build: Callable[[], Mapping[str, Images]], limit: int) -> dict[str, np.ndarray]:
    built = build()
    if built["x_train"].nbytes > limit:
        write_store(store, built)
        return read_store(store)
    arrays = {k: v.materialise() if isinstance(v, Pending) else v for k, v in built.items()}
    arrays["digest"] = train_digest(arrays["x_train"], arrays["y_train"])
    write_npz(path, arrays)
    return arrays
