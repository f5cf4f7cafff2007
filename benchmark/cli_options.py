"""Options the ``bench`` commands share, and the checks of paths and devices they get while the
command line is parsed: a bad value is a one-line error before any data is read or anything trained."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from benchmark.device import resolve_device
from benchmark.errors import BenchError


def check_folder(path: str | os.PathLike, flag: str) -> Path:
    """A folder a command writes into: a folder already, or one it can make (its nearest existing
    ancestor is a writable folder)."""
    folder = Path(path).expanduser()
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BenchError(f"{flag} {folder}: {blocker} is a file, not a folder")
    if blocker is not None and not os.access(blocker, os.W_OK):
        raise BenchError(f"{flag} {folder}: {blocker} is not writable")
    return folder


def check_out_file(path: str | os.PathLike, flag: str) -> Path:
    """A file a command writes: not a folder, in a folder it can make or write into."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise BenchError(f"{flag} {out} is a folder; give a file name")
    check_folder(out.parent, flag)
    return out


def check_device(name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that this machine has (torch knows more device
    types, such as mps or meta, that runs here cannot train on)."""
    resolve_device(name)
    return name


def _folder(flag: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    return lambda ctx, param, value: value if value is None else str(check_folder(value, flag))


def _out_file(flag: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    return lambda ctx, param, value: value if value is None else str(check_out_file(value, flag))


def folder_option(*decls: str, **kw: Any) -> Callable:
    """A folder the command writes into, checked while parsing."""
    return click.option(*decls, callback=_folder(decls[0]), **kw)


def out_option(*decls: str, **kw: Any) -> Callable:
    """A file the command writes (``--out`` unless named), checked while parsing."""
    decls = decls or ("--out",)
    return click.option(*decls, callback=_out_file(decls[0]), **kw)


def device_option(f: Callable) -> Callable:
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N",
                        callback=lambda ctx, param, value: check_device(value))(f)


def data_options(f: Callable) -> Callable:
    f = click.option("--data-root", envvar="BENCH_DATA_ROOT", help="folder with datasets (torchvision layout or offline copies); env BENCH_DATA_ROOT")(f)
    f = folder_option("--cache-dir", envvar="BENCH_CACHE_DIR", help="decoded datasets, poisons, checkpoints; env BENCH_CACHE_DIR (default ~/.cache/unlearnable-bench)")(f)
    f = click.option("--download", is_flag=True, help="let torchvision download a missing dataset")(f)
    return device_option(f)


def poison_options(f: Callable) -> Callable:
    f = click.option("--poison", default="none", show_default=True, help="poison name (bench list poisons)")(f)
    f = click.option("--poison-param", "poison_params", multiple=True, metavar="NAME=VALUE", help="poison parameter, repeatable")(f)
    f = click.option("--key", type=int, default=None, envvar="BENCH_POISON_KEY",
                     help="private poison key (CUDA's seed); only its fingerprint is ever written; env BENCH_POISON_KEY  "
                          "[default: the run seed, so each seed is a fresh poison instance; seed 0 is key 0]")(f)
    f = click.option("--ratio", type=float, default=1.0, show_default=True, help="fraction of the training set poisoned")(f)
    f = click.option("--dataset", default="cifar10", show_default=True, help="cifar10, cifar100, svhn, fashion-mnist or imagefolder:PATH")(f)
    return f
