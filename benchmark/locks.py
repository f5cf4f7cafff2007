"""One maker per cache entry across processes: an exclusive lock per entry, released by the OS.

Every cache that is generated and then written (poison artifacts, TAP's surrogates, finetune's default
backbones, decoded datasets) goes through :func:`load_or_make`, and a run of one config through
:func:`exclusive`: the first process to miss the entry takes its lock (:func:`lock_path`, an OS file
lock via the ``filelock`` package: ``flock`` on POSIX) and makes it; the others say that they wait, and for what, then find it made and load it. A holder
that dies, even by SIGKILL, releases the lock with its open file, so the next waiter takes it over and
resumes from whatever checkpoint the dead one left in the entry's work directory. That directory and
its checkpoints are touched only under the lock, and the entry becomes visible only when its last file
(a manifest, a rename) is committed atomically, so a reader without the lock never sees half of it.

Lock files stay in place: deleting one could let a newcomer lock a fresh file while a waiter holds
the old one. Locks are not reentrant: a process never takes one entry's lock twice; nested locks are
always taken in one order (an artifact, then what it is made from), so waiting never cycles."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")
Notify = Callable[[str], None]


def lock_path(entry: Path) -> Path:
    """The lock file of a cache entry: beside it, its last suffix replaced by ``.lock``."""
    return Path(entry).with_suffix(".lock")


def stderr_note(text: str) -> None:
    """Where waiting is reported by default: one line on stderr (stdout stays the command's output)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


@contextmanager
def exclusive(entry: Path, what: str, notify: Notify | None = None) -> Iterator[bool]:
    """Hold the lock of ``entry`` for the block, which is given whether it had to wait. When another
    process holds it, ``notify`` (stderr by default) is told that this one waits for ``what``, and
    then how long it waited."""
    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    say = notify or stderr_note
    waited = False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting for another process that is making {what} (lock {path})")
        t0 = time.perf_counter()
        lock.acquire()
        waited = True
        say(f"done waiting for {what} ({time.perf_counter() - t0:.1f} s)")
    try:
        yield waited
    finally:
        lock.release()


def load_or_make(entry: Path, what: str, load: Callable[[], T | None], make: Callable[[], T],
                 notify: Notify | None = None) -> T:
    """``load()`` when the entry is there (no lock taken), else ``make()`` under the entry's lock:
    after waiting for another maker, ``load()`` again first, so the entry is made once."""
    found = load()
    if found is not None:
        return found
    with exclusive(entry, what, notify):
        found = load()
        if found is not None:
            return found
        return make()
