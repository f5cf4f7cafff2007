"""Poisons as artifacts: generated once per (dataset, subset, poison, params, key, ratio), cached as
npz (no pickle) with a JSON manifest, validated when loaded, exported by ``bench poison``.

Poisons whose noise does not depend on the ratio (``shares_full_noise``: EM, EM class-wise, REM, SEM,
which train a surrogate) are generated once, as the full-ratio artifact; a ratio below 1 is derived
from it by the poison's own seeded subset (:meth:`attacks.base.Poison.derive`, byte-identical to a
direct generation) and cached beside it with its own manifest, so a sweep over ratios runs the surrogate
once. CUDA's per-image Bernoulli subset comes from the key's RNG stream and stays
ratio-dependent. A generation resumed from a checkpoint reports the seconds of all its sessions.
Processes that need one artifact at once generate it once: the first takes the artifact's lock
(:mod:`benchmark.locks`), the others wait and load it; a killed holder's successor resumes its checkpoint."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import (
    KEY_MAX,
    Poison,
    PoisonContext,
    PoisonedSet,
    SplitRows,
    budget_metrics,
    check_key,
    check_ratio,
    key_fingerprint,
)
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.io import atomic_write, read_json, read_npz, write_json, write_npz, write_npz_chunked
from benchmark.locks import load_or_make
from benchmark.params import build_params, params_dict
from benchmark.records import canonical_json
from benchmark.registry import POISONS
from benchmark.store import mmap_threshold, open_npy, train_digest, write_npy

ARTIFACT_VERSION = 1


def seed_key(seed: int, key: int | None = None) -> int:
    """The poison key of a run: ``key`` when one is given (the same poisoned set for every seed, so seeds
    vary the victim only), else the run seed itself (taken modulo 2^32), so each seed also draws a fresh
    poison instance: the key seeds every random choice of the attacker (CUDA's filters, the noise, the
    surrogate's init and batch order, TAP's surrogate run, the partial subset). Seed 0 keeps key 0, the
    key of every record made before seeds drew keys. A seed-drawn key is as public as the seed: give
    ``--key`` for a private one."""
    return int(key) if key is not None else int(seed) % (KEY_MAX + 1)
#: images per step when a loaded artifact is checked against the clean set
LOAD_CHUNK = 1024


@dataclass
class PoisonSpec:
    """A validated poison request."""

    name: str
    poison: Poison
    key: int
    ratio: float

    @property
    def params(self) -> dict[str, Any]:
        return params_dict(self.poison.params)

    @property
    def revision(self) -> int:
        return int(type(self.poison).revision)

    def record(self) -> dict[str, Any]:
        """``config.poison`` of a run record: the key appears only as its fingerprint; ``revision``
        only when above 1 (records of first revisions keep their run ids); ``identity`` only when the
        poison has one (:meth:`attacks.base.Poison.cache_identity`)."""
        rec = {"name": self.name, "params": self.params, "ratio": self.ratio,
               "key_fingerprint": key_fingerprint(self.key) if type(self.poison).uses_key else None}
        if self.revision > 1:
            rec["revision"] = self.revision
        identity = self.poison.cache_identity()
        if identity:
            rec["identity"] = identity
        return rec


def build_poison(name: str, params: dict[str, Any] | None = None, key: int = 0, ratio: float = 1.0,
                 preset: str | None = None) -> PoisonSpec:
    """Look up and validate a poison: unknown names, undeclared or out-of-range params fail here."""
    canonical = POISONS.canonical(name)
    cls = POISONS.get(name)
    merged = dict(cls.preset_params.get(preset or "", {}))
    merged.update(params or {})
    instance = cls(build_params(cls.Params, merged, owner=f"poison {canonical}"))
    cls.check_ratio(check_ratio(ratio))
    return PoisonSpec(canonical, instance, check_key(key), check_ratio(ratio))


def artifact_id(dataset_id: dict[str, Any], spec: PoisonSpec) -> str:
    payload = {"v": ARTIFACT_VERSION, "dataset": dataset_id, "poison": spec.name, "params": spec.params,
               "key_fingerprint": key_fingerprint(spec.key), "ratio": spec.ratio}
    if spec.revision > 1:
        payload["revision"] = spec.revision
    identity = spec.poison.cache_identity()
    if identity:
        payload["identity"] = identity
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def derives_from_full(spec: PoisonSpec) -> bool:
    """Whether ``spec``'s poisoned set is derived from the full-ratio artifact: its noise ignores the
    ratio and 0 < ratio < 1 (ratio 0 is the clean set, made directly)."""
    return spec.poison.shares_full_noise and 0.0 < spec.ratio < 1.0


def storage_spec(spec: PoisonSpec) -> PoisonSpec:
    """The spec whose artifact is generated for ``spec``: the ratio-1.0 one when derived from it."""
    return replace(spec, ratio=1.0) if derives_from_full(spec) else spec


def _paths(cache: Path, dataset_id: dict[str, Any], spec: PoisonSpec) -> tuple[Path, Path]:
    stem = f"{dataset_id['name'].replace(':', '_').replace('/', '_')}-{spec.name}-{artifact_id(dataset_id, spec)}"
    base = Path(cache) / "poisons"
    return base / f"{stem}.npz", base / f"{stem}.json"


def artifact_paths(cache: Path, dataset_id: dict[str, Any], spec: PoisonSpec) -> tuple[Path, Path]:
    """The artifact generated for ``spec`` (what sweeps generate once and ship to workers): for a ratio
    derived from the full-ratio noise, the full-ratio artifact."""
    return _paths(cache, dataset_id, storage_spec(spec))


def _chunk_linf(a: torch.Tensor, b: torch.Tensor) -> int:
    d = a.to(torch.int16) - b.to(torch.int16)
    return int(d.abs().amax()) if d.numel() else 0


def linf_255(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest absolute difference of two uint8 image sets in grey levels, in chunks of ``LOAD_CHUNK``
    images (no int16 copy of a whole set)."""
    return max((_chunk_linf(a[lo:lo + LOAD_CHUNK], b[lo:lo + LOAD_CHUNK]) for lo in range(0, a.shape[0], LOAD_CHUNK)),
               default=0)


def images_path(npz: Path) -> Path:
    """Where an artifact above the store threshold keeps its images: an (N,C,H,W) uint8 ``.npy``."""
    return npz.with_suffix(".x.npy")


def save_artifact(npz: Path, manifest_path: Path, poisoned: PoisonedSet, manifest: dict[str, Any],
                  images_written: bool = False) -> None:
    """npz with x_train (N,H,W,C uint8), y_train, poisoned_indices; manifest JSON beside it. Above the
    dataset store's threshold (:func:`benchmark.store.mmap_threshold`) the images go to
    :func:`images_path` instead, written in chunks and loaded as a memory map, so neither writing nor
    loading needs a second copy of the set (``images_written``: the poison already wrote them there).
    The manifest is written last, so an artifact without one is incomplete and is regenerated."""
    small = {"y_train": poisoned.y.cpu().numpy().astype(np.int64),
             "poisoned_indices": poisoned.poisoned_indices.cpu().numpy().astype(np.int64)}
    if images_written or poisoned.x.numel() > mmap_threshold():
        if not images_written:
            write_npy(images_path(npz), poisoned.x.cpu().numpy())
    else:
        images_path(npz).unlink(missing_ok=True)
        small["x_train"] = poisoned.x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    write_npz(npz, small)
    write_json(manifest_path, manifest)


def _artifact_images(npz: Path, arrays: dict[str, np.ndarray], regen: str) -> torch.Tensor:
    """The artifact's images as (N,C,H,W): from its npz, or the memory map of its ``.npy``."""
    if "x_train" in arrays:
        x = arrays["x_train"]
        if x.dtype != np.uint8 or x.ndim != 4:
            raise BenchError(f"corrupt poison file {npz}: x_train is {x.dtype} {x.shape}; {regen}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    try:
        return torch.from_numpy(open_npy(images_path(npz)))
    except BenchError as exc:
        raise BenchError(f"{exc}; {regen}") from None


def load_artifact(npz: Path, clean: ImageSet, budget_255: int | None = None) -> PoisonedSet:
    """Load and validate a poisoned training set against its clean counterpart: shape, labels, indices,
    the L-inf budget, and clean images wherever the file says it did not poison."""
    regen = "delete it (and its .json) to regenerate it on the next run"
    arrays = read_npz(npz, required=("y_train", "poisoned_indices"))
    y, idx = arrays["y_train"], arrays["poisoned_indices"]
    n, c, h, w = clean.x.shape
    px = _artifact_images(npz, arrays, regen)
    if px.dtype != torch.uint8 or tuple(px.shape) != (n, c, h, w):
        raise BenchError(f"corrupt poison file {npz}: its images are {px.dtype} {tuple(px.shape)}, expected uint8 "
                         f"{(n, c, h, w)}; {regen}")
    if y.shape != (n,) or not np.array_equal(y, clean.y.cpu().numpy()):
        raise BenchError(f"corrupt poison file {npz}: y_train does not match the clean labels; {regen}")
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise BenchError(f"corrupt poison file {npz}: poisoned_indices out of range; {regen}")
    clean_x = clean.x.cpu()
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[torch.from_numpy(idx.astype(np.int64))] = False
    worst, changed = 0, 0
    for lo in range(0, n, LOAD_CHUNK):  # one pass in chunks: a memory-mapped artifact is read once, never copied
        a, b, keep = px[lo:lo + LOAD_CHUNK], clean_x[lo:lo + LOAD_CHUNK], untouched[lo:lo + LOAD_CHUNK]
        if budget_255 is not None:
            worst = max(worst, _chunk_linf(a, b))
        if keep.any():
            changed += int((a[keep] != b[keep]).flatten(1).any(1).sum())
    if budget_255 is not None and worst > budget_255:
        raise BenchError(f"poison file {npz} exceeds its L-inf budget: {worst}/255 > {budget_255}/255; {regen}")
    if changed:
        raise BenchError(f"poison file {npz} changed {changed} image(s) outside its poisoned_indices; {regen}")
    return PoisonedSet(px, torch.from_numpy(y.astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))


def _load_or_generate(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path,
                      device: torch.device, preset: str, progress: Any,
                      split_rows: SplitRows | None = None) -> tuple[PoisonedSet, dict[str, Any]]:
    """The cached artifact of exactly ``spec`` (validated), or a fresh generation written to the cache:
    by one process at a time (:func:`benchmark.locks.load_or_make`), the others wait and load it."""
    npz, manifest_path = _paths(cache, dataset_id, spec)

    def load() -> tuple[PoisonedSet, dict[str, Any]] | None:
        if not (npz.exists() and manifest_path.exists()):
            return None
        manifest = read_json(manifest_path)
        poisoned = load_artifact(npz, train, spec.poison.budget_255())
        return poisoned, dict(manifest, cached=True, artifact=str(npz))

    return load_or_make(npz, f"poison artifact {npz.stem}", load,
                        lambda: _generate(train, dataset_id, spec, cache, device, preset, progress, split_rows))


def _generate(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path, device: torch.device,
              preset: str, progress: Any, split_rows: SplitRows | None) -> tuple[PoisonedSet, dict[str, Any]]:
    """Generate ``spec``'s artifact and commit it (manifest last). Only the holder of the artifact's lock
    runs this, so its work directory (checkpoints a next holder resumes from) is its own."""
    npz, manifest_path = _paths(cache, dataset_id, spec)
    budget = spec.poison.budget_255()
    work = Path(cache) / "poison-work" / npz.stem
    big = train.x.numel() > mmap_threshold() and device.type == "cpu"
    ctx = PoisonContext(key=spec.key, ratio=spec.ratio, device=device, preset=preset, workdir=work,
                        progress=progress, num_classes=train.num_classes,
                        images_file=npz.with_suffix(".x.part.npy") if big else None, split_rows=split_rows,
                        test=split_rows.dataset.test if split_rows is not None and split_rows.dataset is not None
                        else None)
    t0 = time.perf_counter()
    poisoned = spec.poison.generate(train.to(device), ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    session = poisoned.session  # checkpointing poisons: sessions and seconds before this one
    poisoned = PoisonedSet(poisoned.x.cpu(), poisoned.y.cpu(), poisoned.poisoned_indices.cpu(), dict(poisoned.info))
    if poisoned.x.shape != train.x.shape or poisoned.x.dtype != torch.uint8:
        raise RuntimeError(f"poison {spec.name} returned {poisoned.x.dtype} {tuple(poisoned.x.shape)}, "
                           f"expected uint8 {tuple(train.x.shape)}")
    if budget is not None:
        diff = linf_255(poisoned.x, train.x.cpu())
        if diff > budget:
            raise RuntimeError(f"poison {spec.name} broke its budget: {diff}/255 > {budget}/255")
    manifest = {
        "artifact_version": ARTIFACT_VERSION,
        "dataset": dataset_id,
        "poison": spec.record(),
        "generation_seconds": round(seconds + (session.seconds_before if session is not None else 0.0), 4),
        "generation_device": str(device),
    }
    if session is not None:
        manifest["generation_sessions"] = session.sessions
        manifest["resumed"] = manifest["generation_sessions"] > 1
    manifest["budget"] = budget_metrics(train.x.cpu(), poisoned.x, poisoned.poisoned_indices)
    if poisoned.info.get("budget_not_measured"):  # e.g. an imported file made from another copy of the data
        manifest["budget"] = {"num_poisoned": manifest["budget"]["num_poisoned"],
                              "not_measured": poisoned.info["budget_not_measured"]}
    manifest["digest"] = poisoned_digest(poisoned)
    manifest["info"] = poisoned.info
    written = ctx.wrote_images_file(poisoned.x)
    if written:  # the poison filled the mapped file: it becomes the artifact's images as it is
        os.replace(ctx.images_file, images_path(npz))
    elif ctx.images_file is not None:
        ctx.images_file.unlink(missing_ok=True)
    save_artifact(npz, manifest_path, poisoned, manifest, images_written=written)
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return poisoned, dict(manifest, cached=False, artifact=str(npz))


#: measured budgets of one poisoned set agree to this much between records made on different machines
#: (rounding of the last float digit); two instances of one recipe differ by orders of magnitude more
SET_TOLERANCE = {"l2_mean": 1e-5, "psnr": 1e-3, "ssim": 1e-5, "linf_255": 0.0}


def same_poisoned_set(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two poison summaries (a record's ``poison`` section, an artifact manifest: ``digest`` and
    ``budget``) name the same poisoned set: by digest where both carry one, else by the measured budget
    (what records made before digests existed have). What neither says counts as the same."""
    if a.get("digest") and b.get("digest"):
        return bool(a["digest"] == b["digest"])
    x, y = a.get("budget") or {}, b.get("budget") or {}
    return all(x.get(k) is None or y.get(k) is None or abs(float(x[k]) - float(y[k])) <= tol
               for k, tol in SET_TOLERANCE.items())


def poisoned_digest(poisoned: PoisonedSet) -> str:
    """SHA-256 (16 hex digits) of a poisoned training set's bytes: images (N,C,H,W uint8, C order), then
    labels as int64. Two runs with one digest trained on the same data; the same recipe and key run on
    another CPU can end elsewhere (float kernels differ in the last bits), and the digest tells them apart."""
    return bytes(train_digest(poisoned.x.cpu().numpy(), poisoned.y.cpu().numpy())).decode()


def get_poisoned(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path, device: torch.device,
                 preset: str = "cpu", progress: Any = None,
                 split_rows: SplitRows | None = None) -> tuple[PoisonedSet, dict[str, Any]]:
    """Return the poisoned training set and its manifest (with ``digest``, :func:`poisoned_digest` of the
    set: hashed when generated, hashed again from the bytes when loaded from the cache), generating and
    caching it if needed.

    A ratio derived from the full-ratio noise (:func:`derives_from_full`) is cached under its own id
    (``derived_artifact`` in the returned manifest); ``artifact`` names the full-ratio artifact it
    comes from, which is what sweeps ship between workers. ``split_rows`` says where ``train`` sits in
    the whole training split (:class:`attacks.base.SplitRows`)."""
    poisoned, manifest = _get_poisoned(train, dataset_id, spec, cache, device, preset, progress, split_rows)
    if manifest.get("cached") or not manifest.get("digest"):  # what was read, not what a manifest says
        manifest = dict(manifest, digest=poisoned_digest(poisoned))
    return poisoned, manifest


def _get_poisoned(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path, device: torch.device,
                  preset: str, progress: Any, split_rows: SplitRows | None) -> tuple[PoisonedSet, dict[str, Any]]:
    if not derives_from_full(spec):
        return _load_or_generate(train, dataset_id, spec, cache, device, preset, progress, split_rows)
    own_npz, own_json = _paths(cache, dataset_id, spec)
    full_npz, _ = _paths(cache, dataset_id, storage_spec(spec))

    def load() -> tuple[PoisonedSet, dict[str, Any]] | None:
        if not (own_npz.exists() and own_json.exists()):
            return None
        poisoned = load_artifact(own_npz, train, spec.poison.budget_255())
        artifact = full_npz if full_npz.exists() else own_npz
        return poisoned, dict(read_json(own_json), cached=True, artifact=str(artifact), derived_artifact=str(own_npz))

    return load_or_make(own_npz, f"poison artifact {own_npz.stem}", load,
                        lambda: _derive(train, dataset_id, spec, cache, device, preset, progress, split_rows))


def _derive(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path, device: torch.device,
            preset: str, progress: Any, split_rows: SplitRows | None) -> tuple[PoisonedSet, dict[str, Any]]:
    """``spec``'s set derived from its full-ratio artifact (generated first if missing; its lock is taken
    inside this one's, never the other way round) and committed under its own id."""
    own_npz, own_json = _paths(cache, dataset_id, spec)
    full_npz, _ = _paths(cache, dataset_id, storage_spec(spec))
    full, full_manifest = _load_or_generate(train, dataset_id, storage_spec(spec), cache, device, preset, progress,
                                            split_rows)
    clean = ImageSet(train.x.cpu(), train.y.cpu(), train.classes)
    poisoned = spec.poison.derive(full, clean, spec.ratio, spec.key)
    manifest = {
        "artifact_version": ARTIFACT_VERSION,
        "dataset": dataset_id,
        "poison": spec.record(),
        "generation_seconds": full_manifest["generation_seconds"],
        "generation_device": full_manifest["generation_device"],
        **{k: full_manifest[k] for k in ("generation_sessions", "resumed") if k in full_manifest},
        "budget": budget_metrics(clean.x, poisoned.x, poisoned.poisoned_indices),
        "digest": poisoned_digest(poisoned),
        "info": full_manifest.get("info", {}),
        "derived_from": {"artifact": full_npz.name, "ratio": 1.0,
                         "note": "the noise does not depend on the ratio: this set is the full-ratio artifact's "
                                 "images on this ratio's seeded subset and the clean images elsewhere; "
                                 "generation_seconds is the cost of that shared noise"},
    }
    save_artifact(own_npz, own_json, poisoned, manifest)
    return poisoned, dict(manifest, cached=bool(full_manifest.get("cached")), artifact=str(full_npz),
                          derived_artifact=str(own_npz))


def check_export_path(out: str | Path) -> Path:
    """``bench poison --out``: an .npz file in a writable folder that exists (checked before any work)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise BenchError(f"--out must end in .npz, got '{out}'")
    folder = out.parent
    if not folder.is_dir():
        raise BenchError(f"--out {out}: output folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise BenchError(f"--out {out}: output folder '{folder}' is not writable")
    if out.is_dir() or out.with_suffix(".json").is_dir():
        raise BenchError(f"--out {out}: a folder is in the way of the .npz or its .json sidecar")
    return out


def export_artifact(npz: Path, manifest: dict[str, Any], out: Path) -> Path:
    """Copy a cached artifact to ``out`` (npz) with its sidecar ``out.json``. A ratio derived from the
    full-ratio noise exports its own set (``manifest['derived_artifact']``), not the full one."""
    out = check_export_path(out)
    source = Path(manifest.get("derived_artifact") or npz)
    if images_path(source).exists():  # a memory-mapped artifact: one self-contained npz, written in chunks
        x = open_npy(images_path(source))
        small = read_npz(source, required=("y_train", "poisoned_indices"))
        n, c, h, w = x.shape
        write_npz_chunked(out, small, "x_train", (n, h, w, c),
                          (x[lo:lo + LOAD_CHUNK].transpose(0, 2, 3, 1) for lo in range(0, n, LOAD_CHUNK)))
    else:
        atomic_write(out, lambda p: shutil.copyfile(source, p))
    sidecar = {k: v for k, v in manifest.items() if k not in ("artifact", "cached", "derived_artifact")}
    write_json(out.with_suffix(".json"), sidecar)
    return out.with_suffix(".json")
