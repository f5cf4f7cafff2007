"""Poisons as artifacts: generated once per (dataset, subset, poison, params, key, ratio), cached as
npz (no pickle) with a JSON manifest, validated when loaded, exported by ``bench poison``."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import (
    Poison,
    PoisonContext,
    PoisonedSet,
    budget_metrics,
    check_key,
    check_ratio,
    key_fingerprint,
)
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.io import read_json, read_npz, write_json, write_npz
from benchmark.params import build_params, params_dict
from benchmark.records import canonical_json
from benchmark.registry import POISONS

ARTIFACT_VERSION = 1


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
        only when above 1 (records of first revisions keep their run ids)."""
        rec = {"name": self.name, "params": self.params, "ratio": self.ratio,
               "key_fingerprint": key_fingerprint(self.key) if type(self.poison).uses_key else None}
        if self.revision > 1:
            rec["revision"] = self.revision
        return rec


def build_poison(name: str, params: dict[str, Any] | None = None, key: int = 0, ratio: float = 1.0,
                 preset: str | None = None) -> PoisonSpec:
    """Look up and validate a poison: unknown names, undeclared or out-of-range params fail here."""
    canonical = POISONS.canonical(name)
    cls = POISONS.get(name)
    merged = dict(cls.preset_params.get(preset or "", {}))
    merged.update(params or {})
    instance = cls(build_params(cls.Params, merged, owner=f"poison {canonical}"))
    return PoisonSpec(canonical, instance, check_key(key), check_ratio(ratio))


def artifact_id(dataset_id: dict[str, Any], spec: PoisonSpec) -> str:
    payload = {"v": ARTIFACT_VERSION, "dataset": dataset_id, "poison": spec.name, "params": spec.params,
               "key_fingerprint": key_fingerprint(spec.key), "ratio": spec.ratio}
    if spec.revision > 1:
        payload["revision"] = spec.revision
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def artifact_paths(cache: Path, dataset_id: dict[str, Any], spec: PoisonSpec) -> tuple[Path, Path]:
    stem = f"{dataset_id['name'].replace(':', '_').replace('/', '_')}-{spec.name}-{artifact_id(dataset_id, spec)}"
    base = Path(cache) / "poisons"
    return base / f"{stem}.npz", base / f"{stem}.json"


def save_artifact(npz: Path, manifest_path: Path, poisoned: PoisonedSet, manifest: dict[str, Any]) -> None:
    """npz with x_train (N,H,W,C uint8), y_train, poisoned_indices; manifest JSON beside it.
    The manifest is written last, so an artifact without one is incomplete and is regenerated."""
    write_npz(npz, {
        "x_train": poisoned.x.permute(0, 2, 3, 1).contiguous().cpu().numpy(),
        "y_train": poisoned.y.cpu().numpy().astype(np.int64),
        "poisoned_indices": poisoned.poisoned_indices.cpu().numpy().astype(np.int64),
    })
    write_json(manifest_path, manifest)


def load_artifact(npz: Path, clean: ImageSet, budget_255: int | None = None) -> PoisonedSet:
    """Load and validate a poisoned training set against its clean counterpart."""
    arrays = read_npz(npz, required=("x_train", "y_train", "poisoned_indices"))
    x, y, idx = arrays["x_train"], arrays["y_train"], arrays["poisoned_indices"]
    n, c, h, w = clean.x.shape
    if x.dtype != np.uint8 or x.shape != (n, h, w, c):
        raise BenchError(f"corrupt poison file {npz}: x_train is {x.dtype} {x.shape}, expected uint8 {(n, h, w, c)}; "
                         "delete it to regenerate")
    if y.shape != (n,) or not np.array_equal(y, clean.y.cpu().numpy()):
        raise BenchError(f"corrupt poison file {npz}: y_train does not match the clean labels; delete it to regenerate")
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise BenchError(f"corrupt poison file {npz}: poisoned_indices out of range; delete it to regenerate")
    px = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if budget_255 is not None:
        diff = (px.to(torch.int16) - clean.x.cpu().to(torch.int16)).abs().amax()
        if int(diff) > budget_255:
            raise BenchError(f"poison file {npz} exceeds its L-inf budget: {int(diff)}/255 > {budget_255}/255")
    return PoisonedSet(px, torch.from_numpy(y.astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))


def get_poisoned(train: ImageSet, dataset_id: dict[str, Any], spec: PoisonSpec, cache: Path, device: torch.device,
                 preset: str = "cpu", progress: Any = None) -> tuple[PoisonedSet, dict[str, Any]]:
    """Return the poisoned training set and its manifest, generating and caching it if needed."""
    npz, manifest_path = artifact_paths(cache, dataset_id, spec)
    budget = getattr(spec.poison, "budget_255", lambda: None)()
    if npz.exists() and manifest_path.exists():
        manifest = read_json(manifest_path)
        poisoned = load_artifact(npz, train, budget)
        manifest = dict(manifest, cached=True, artifact=str(npz))
        return poisoned, manifest
    work = Path(cache) / "poison-work" / npz.stem
    ctx = PoisonContext(key=spec.key, ratio=spec.ratio, device=device, preset=preset, workdir=work,
                        progress=progress, num_classes=train.num_classes)
    t0 = time.perf_counter()
    poisoned = spec.poison.generate(train.to(device), ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    poisoned = PoisonedSet(poisoned.x.cpu(), poisoned.y.cpu(), poisoned.poisoned_indices.cpu(), poisoned.info)
    if poisoned.x.shape != train.x.shape or poisoned.x.dtype != torch.uint8:
        raise RuntimeError(f"poison {spec.name} returned {poisoned.x.dtype} {tuple(poisoned.x.shape)}, "
                           f"expected uint8 {tuple(train.x.shape)}")
    if budget is not None:
        diff = int((poisoned.x.to(torch.int16) - train.x.cpu().to(torch.int16)).abs().amax())
        if diff > budget:
            raise RuntimeError(f"poison {spec.name} broke its budget: {diff}/255 > {budget}/255")
    manifest = {
        "artifact_version": ARTIFACT_VERSION,
        "dataset": dataset_id,
        "poison": spec.record(),
        "generation_seconds": round(seconds, 4),
        "generation_device": str(device),
        "budget": budget_metrics(train.x.cpu(), poisoned.x, poisoned.poisoned_indices),
        "info": poisoned.info,
    }
    save_artifact(npz, manifest_path, poisoned, manifest)
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return poisoned, dict(manifest, cached=False, artifact=str(npz))


def export_artifact(npz: Path, manifest: dict[str, Any], out: Path) -> Path:
    """Copy a cached artifact to ``out`` (npz) with its sidecar ``out.json``."""
    out = Path(out)
    if out.suffix != ".npz":
        raise BenchError(f"--out must end in .npz, got '{out}'")
    from benchmark.io import atomic_write

    atomic_write(out, lambda p: shutil.copyfile(npz, p))
    sidecar = {k: v for k, v in manifest.items() if k not in ("artifact", "cached")}
    write_json(out.with_suffix(".json"), sidecar)
    return out.with_suffix(".json")
