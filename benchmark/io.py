"""Atomic, pickle-free file writing and reading (JSON, npz arrays)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import BenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(tmp_path)`` into a temp file beside ``path``, then rename over it.

    A crash leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read JSON file {path}: {exc}") from None


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Uncompressed npz (fast to load); object arrays are refused so loading never needs pickle."""
    for key, arr in arrays.items():
        if arr.dtype == object:
            raise ValueError(f"refusing to store object array '{key}'")

    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, _write)


def write_npz_chunked(path: Path, arrays: Mapping[str, np.ndarray], big: str, shape: tuple[int, ...],
                      chunks: Iterable[np.ndarray]) -> None:
    """An npz like :func:`write_npz` whose uint8 array ``big`` (of ``shape``) is written from ``chunks``
    (consecutive row blocks) instead of one array in memory: what ``np.load`` reads back is the same."""

    def _write(p: Path) -> None:
        with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
            with zf.open(f"{big}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for part in chunks:
                    fh.write(np.ascontiguousarray(part, dtype=np.uint8).tobytes())

    atomic_write(path, _write)


def read_npz(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load every array of an npz without pickle; a corrupt file is a one-line BenchError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise BenchError(f"corrupt or unreadable array file {path}: {exc}") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise BenchError(f"corrupt array file {path}: missing {', '.join(missing)}")
    return arrays
