"""The poison interface: a function of (clean uint8 train set, params, key, device) -> PoisonedSet.

A poison is a class registered with ``@register_poison("name")`` that declares a ``Params`` dataclass
(see :mod:`benchmark.params`) and implements :meth:`Poison.generate`. Its optional capabilities are
declared on :class:`Poison` with defaults, and :mod:`benchmark.poisoning` relies on them: an L-inf
budget checked on every stored image (:meth:`Poison.budget_255`), ratio-independent noise from which a
partial poison is derived (``shares_full_noise``, :meth:`Poison.derive`), whether the report may
re-create a preview on a few images (:meth:`Poison.preview_is_cheap`), and the resumable sessions of a
long generation (:attr:`PoisonedSet.session`). Everything else (the ratio subset, budget metrics,
caching, manifests, the key fingerprint) is shared here.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.plugin import P, Plugin

KEY_MAX = 2**32 - 1  # NumPy's legacy seed range, which CUDA's official key scheme uses
_FINGERPRINT_SALT = b"unlearnable-bench/key-fingerprint/v2"


@functools.lru_cache(maxsize=64)
def key_fingerprint(key: int) -> str:
    """A memory-hard hash (scrypt, 32 MiB, ~0.1 s) of the private key: identifies a key without revealing it.

    Keys live in NumPy's 32-bit seed range, so a fast hash (v1 was a salted SHA-256) could be inverted
    by trying all 2^32 keys in about half an hour on one core; at ~0.1 s and 32 MiB per try, scrypt
    makes that about 14 core-years. A key chosen from a tiny set (the default 0, say) is still found
    by trying that set: pick a large random key when it must stay private.
    """
    digest = hashlib.scrypt(str(int(key)).encode(), salt=_FINGERPRINT_SALT, n=2**15, r=8, p=1,
                            maxmem=64 * 1024 * 1024, dklen=8)
    return digest.hex()


def check_key(key: int) -> int:
    if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key <= KEY_MAX:
        raise BenchError(f"poison key must be an integer in [0, {KEY_MAX}], got {key!r}")
    return key


def check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise BenchError(f"poison ratio must be in [0, 1], got {ratio!r}")
    return float(ratio)


@dataclass(frozen=True)
class SplitRows:
    """Where the images being poisoned sit in the dataset's whole training split (a preset's victim
    subset): a poison made elsewhere for the whole split is cut to these rows."""

    indices: torch.Tensor  # positions, in the whole split, of the images being poisoned, in their order
    split_size: int  # images in the whole training split
    #: the whole data set (``Dataset``: its training split and source), so a file of the whole split can be
    #: checked row by row (labels, clean rows) beyond the run's subset; None where only the subset is known
    dataset: Any = None

    @property
    def split(self) -> ImageSet | None:
        return None if self.dataset is None else self.dataset.train

    @property
    def source(self) -> str:
        return "" if self.dataset is None else f"{self.dataset.name} from source '{self.dataset.source}'"


@dataclass
class PoisonContext:
    """What a poison may use besides its params: device, key, ratio, seeds, progress, work dir."""

    key: int = 0
    ratio: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    preset: str = "cpu"
    workdir: Any = None  # Path for checkpoints of long generations, or None
    progress: Any = None  # callable(step:int, total:int, info:dict) or None
    num_classes: int = 10
    #: where a poisoned set too big to hold twice is written as it is made (a ``.npy``; set by the cache
    #: above the store threshold, for generation on the CPU), or None
    images_file: Path | None = None
    #: where the images being poisoned sit in the whole training split, or None (they are the split)
    split_rows: SplitRows | None = None
    #: the dataset's whole test split, where a targeted poison chooses its target image (None: not given)
    test: ImageSet | None = None
    _memmap: Any = field(default=None, repr=False)  # the np.memmap behind images_like's tensor

    def images_like(self, x: torch.Tensor) -> torch.Tensor:
        """An uninitialised uint8 tensor shaped like ``x`` for a poison's output: a writable memory map of
        ``images_file`` when it is set, so a poison that fills it never holds its output in memory."""
        if self.images_file is None or x.device.type != "cpu":
            return torch.empty_like(x)
        Path(self.images_file).parent.mkdir(parents=True, exist_ok=True)
        self._memmap = np.lib.format.open_memmap(self.images_file, mode="w+", dtype=np.uint8, shape=tuple(x.shape))
        return torch.from_numpy(self._memmap)

    def wrote_images_file(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is the memory map :meth:`images_like` handed out; if so it is flushed to its file."""
        mm = self._memmap
        if mm is None or x.device.type != "cpu" or x.data_ptr() != mm.ctypes.data or tuple(x.shape) != mm.shape:
            return False
        mm.flush()
        return True


@dataclass(frozen=True)
class GenerationSession:
    """Which session of a resumable generation produced a poison: the count of sessions so far and the
    generation seconds of the earlier ones (up to the checkpoint this one resumed from)."""

    sessions: int = 1
    seconds_before: float = 0.0


@dataclass
class PoisonedSet:
    """Output of a poison: poisoned uint8 images (same shape as the clean ones), labels, and the
    indices of the images that were changed (for partial poisoning)."""

    x: torch.Tensor
    y: torch.Tensor
    poisoned_indices: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # poison-specific facts for the manifest
    #: set by poisons that checkpoint their generation (the manifest adds up the sessions' seconds)
    session: GenerationSession | None = None

    def as_imageset(self, classes: list[str]) -> ImageSet:
        return ImageSet(self.x, self.y, list(classes))


class Poison(Plugin[P]):
    """Base class. Subclasses declare ``Params`` (``Poison[XParams]``) and implement ``generate``; ``name`` comes from the
    registry. ``uses_key`` marks poisons whose key is a secret (CUDA); all poisons are seeded by it.
    The optional capabilities below have defaults that fit a poison which declares none of them."""

    uses_key: ClassVar[bool] = True
    #: algorithm revision: bump it when a code change alters what the poison produces for the same params
    #: and key. Above 1 it is part of ``config.poison`` (so of the run id) and of the cached artifact's id,
    #: so records and artifacts of the old algorithm are never reused or averaged with the new ones.
    revision: ClassVar[int] = 1
    #: how the perturbation is bounded: "linf", "l2", "l0", "unbounded" (e.g. CUDA's convolutions), "none"
    budget_type: ClassVar[str] = "linf"
    #: the poisoned images do not depend on the ratio, only which of them are used: a partial poison is
    #: then derived from the full-ratio one (:meth:`derive`) instead of being generated again
    shares_full_noise: ClassVar[bool] = False
    #: whether the report may re-create this poison on a few images for a preview; None: when it has no
    #: ``preset_params`` (those mark poisons that train a surrogate). See :meth:`preview_is_cheap`.
    preview_cheap: ClassVar[bool | None] = None
    #: "availability" (lower every test accuracy: the main matrix) or "targeted" (one chosen test image into
    #: a chosen class: its own metric and leaderboard section, never ranked with the availability poisons)
    threat_model: ClassVar[str] = "availability"

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        raise NotImplementedError

    @classmethod
    def check_ratio(cls, ratio: float) -> None:
        """Refuse a ``--ratio`` this poison cannot honour (a one-line BenchError); default: any in [0, 1]."""

    def validate(self, train: ImageSet, rows: SplitRows | None = None) -> None:
        """Checks of the poison's input that need the clean training set (an imported file's shape, labels,
        indices), run by the spine when a run is prepared, before any training; raise a one-line
        :class:`BenchError`. ``rows``: where ``train`` sits in the whole split. Default: nothing to check."""

    def cache_identity(self) -> dict[str, Any]:
        """What identifies this poison's output beyond its params and key (e.g. the sha256 of an
        imported file, which can change under the same path): part of the cached artifact's id and of
        ``config.poison`` (so of the run id). Empty, and then left out of both, for poisons that their
        params and key define."""
        return {}

    def budget_255(self) -> int | None:
        """The L-inf budget in grey levels that every stored image meets (checked when generated and
        when loaded from the cache), or None when the poison declares none."""
        return None

    def derive(self, full: PoisonedSet, train: ImageSet, ratio: float, key: int) -> PoisonedSet:
        """The ``ratio`` poison from the full-ratio one (used when ``shares_full_noise``): the full
        poison's images on the exact seeded subset :func:`exact_subset` (``ratio``, ``key``), the clean
        images elsewhere; byte-identical to a direct generation of a poison that poisons that subset."""
        indices = exact_subset(len(train), ratio, key)
        x = train.x.clone()
        if indices.numel():
            sel = indices.to(x.device)
            x[sel] = full.x.to(x.device)[sel]
        return PoisonedSet(x, train.y.clone(), indices, info=dict(full.info))

    @classmethod
    def preview_is_cheap(cls) -> bool:
        """Whether a preview may re-create this poison on one image per class (no surrogate training,
        and the result on a few images is the same as on the whole set)."""
        return bool(cls.preview_cheap if cls.preview_cheap is not None else not cls.preset_params)

    @staticmethod
    def num_classes_of(train: ImageSet, ctx: PoisonContext) -> int:
        """Classes to poison for: the data set's, or more when the labels go beyond it."""
        return max(ctx.num_classes, int(train.y.max()) + 1 if len(train) else 0)


def exact_subset(n: int, ratio: float, seed: int) -> torch.Tensor:
    """A seeded random subset of exactly round(ratio * n) indices, sorted (EM-style partial poisoning)."""
    count = int(round(ratio * n))
    if count >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=gen)[:count]).values


# ------------------------------------------------------------------------------------ budget metrics

def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM's normalised 1-D Gaussian window (float64)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid'
    windows) on [0,1] float images (N,C,H,W), averaged over channels.

    Batched: the five local statistics of every channel of every image are blurred at once by the
    separable Gaussian written as two banded matrices ('valid' windows), i.e. two batched matmuls,
    which BLAS runs far faster on CPU than small-kernel convolutions.
    """
    n, c, h, w = a.shape
    size = min(11, h, w)
    size -= (size + 1) % 2  # odd window
    g = gaussian_window(size).to(a)

    def band(length: int) -> torch.Tensor:  # (length, length-size+1): column j holds g at rows j..j+size-1
        out = torch.zeros(length, length - size + 1, dtype=a.dtype, device=a.device)
        for i in range(size):
            out.diagonal(-i).copy_(g[i].expand(length - size + 1))
        return out

    stats = torch.stack([a, b, a * a, b * b, a * b])  # (5, n, c, h, w)
    blurred = band(h).T @ (stats @ band(w))  # blur along width, then along height
    mu_a, mu_b, e_aa, e_bb, e_ab = blurred
    s_aa, s_bb, s_ab = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).mean(dim=(1, 2, 3))


def budget_metrics(clean: torch.Tensor, poisoned: torch.Tensor, indices: torch.Tensor,
                   chunk: int = 1024) -> dict[str, float]:
    """L-inf, mean L2, PSNR and SSIM of poisoned vs clean uint8 images, over the poisoned subset.

    ``linf`` and ``l2_mean`` are in [0,1] pixel units (``linf_255`` in grey levels); PSNR (dB) and
    SSIM are means over the poisoned images (identical images count as PSNR 100 dB).
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    if idx.numel() == 0:
        return {"linf": 0.0, "linf_255": 0, "l2_mean": 0.0, "psnr": 100.0, "ssim": 1.0, "num_poisoned": 0}
    linf, l2s, psnrs, ssims = 0.0, [], [], []
    for start in range(0, idx.numel(), chunk):
        sel = idx[start:start + chunk]
        a = clean[sel].to(torch.float32) / 255.0
        b = poisoned[sel].to(torch.float32) / 255.0
        d = (b - a).flatten(1)
        linf = max(linf, float(d.abs().max()))
        l2s.append(d.norm(dim=1))
        mse = (d**2).mean(dim=1)
        psnrs.append(torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, 100.0)))
        ssims.append(ssim(a, b))
    return {
        "linf": round(linf, 6),
        "linf_255": int(round(linf * 255)),
        "l2_mean": round(float(torch.cat(l2s).mean()), 6),
        "psnr": round(float(torch.cat(psnrs).mean()), 4),
        "ssim": round(float(torch.cat(ssims).mean()), 6),
        "num_poisoned": int(idx.numel()),
    }
