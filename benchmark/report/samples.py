"""Sample grids of the report: per poison, clean training images (one per class), their poisoned
versions and the scaled difference, with a JSON sidecar naming the poison a grid shows.

Images come from the cached poison artifact of the record's exact poison, or, for poisons that train no
surrogate, from re-creating the poison on one image per class (the key recovered from its fingerprint).
An existing grid that cannot be re-made is kept only when its sidecar names the records' poison.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from benchmark.errors import BenchError
from benchmark.io import atomic_write, read_json, read_npz
from benchmark.params import complete_params
from benchmark.records import canonical_json
from benchmark.report.collect import Warn, slug
from benchmark.report.plots import pyplot, save, wrap

MAX_SAMPLE_CLASSES = 10


def diff_image(clean: Any, poisoned: Any) -> tuple[Any, float, float]:
    """The difference row of a sample grid: ``0.5 + amp * (poisoned - clean)`` on [0, 1] images, with
    ``amp`` chosen so the largest |difference| reaches black or white (grey = no change). Returns the
    images, ``amp`` (the factor the row label states) and the largest |difference|."""
    d = poisoned - clean
    peak = float(abs(d).max()) if d.size else 0.0
    amp = 0.5 / peak if peak > 0 else 1.0
    return 0.5 + amp * d, amp, peak


def diff_label(amp: float) -> str:
    """Row label: the factor by which the drawn difference is scaled (deviation from grey = amp x diff)."""
    return f"diff ×{amp:.3g}"


def plot_samples(clean: Any, poisoned: Any, classes: list[str], title: str, path: Path) -> Path:
    """3 rows: clean, poisoned, signed difference scaled (by the factor in its row label) so its largest
    value reaches black or white."""
    plt, _sns = pyplot()
    import numpy as np

    c = clean.numpy().astype(np.float64) / 255.0
    p = poisoned.numpy().astype(np.float64) / 255.0
    shown, amp, peak = diff_image(c, p)
    k = c.shape[0]
    fig, axes = plt.subplots(3, k, figsize=(1.15 * k + 1.2, 4.0), squeeze=False)
    gray = c.shape[1] == 1

    def show(ax: Any, img: Any) -> None:
        img = np.clip(img.transpose(1, 2, 0), 0, 1)
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)

    row_names = ["clean", "poisoned", diff_label(amp)]
    for j in range(k):
        show(axes[0][j], c[j])
        show(axes[1][j], p[j])
        show(axes[2][j], shown[j])
        axes[0][j].set_title(classes[j][:12], fontsize=8)
    for i, name in enumerate(row_names):
        axes[i][0].set_ylabel(name, fontsize=9)
    fig.suptitle(wrap(f"{title} (max |diff| = {round(peak * 255)}/255)", 90), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------------------- sample images

def _with_legacy(poison: Any) -> Any:
    """A manifest's poison entry with the params it leaves out at their ``legacy`` value filled in, as the
    report fills them in records (:func:`benchmark.report.collect.with_legacy_params`)."""
    if not isinstance(poison, dict) or not isinstance(poison.get("params"), dict):
        return poison
    from benchmark.registry import POISONS

    try:
        cls = POISONS.get(str(poison.get("name")))
    except BenchError:
        return poison
    return {**poison, "params": complete_params(cls.Params, poison["params"])}


def _is_cheap(cls: type) -> bool:
    """Poisons that need no surrogate training can be re-created on a few images for a preview
    (:meth:`attacks.base.Poison.preview_is_cheap`)."""
    return cls.preview_is_cheap()


class SampleSource:
    """Clean and poisoned sample images for a record: from the cached poison artifact if present, else
    by re-running a cheap poison on one training image per class (deterministic: first image of each
    class of the protocol's training subset, the key recovered from its fingerprint)."""

    def __init__(self, data_root: Path | None, cache: Path | None, warn: Warn) -> None:
        self.data_root, self.cache, self.warn = data_root, cache, warn
        self._datasets: dict[str, Any] = {}
        self._manifests: list[tuple[Path, dict[str, Any]]] | None = None

    def _dataset(self, name: str) -> Any:
        if name not in self._datasets:
            from benchmark.data import load_dataset

            try:
                self._datasets[name] = load_dataset(name, Path(self.data_root or "data"), Path(self.cache or "."))
            except BenchError as exc:
                self._datasets[name] = exc
        return self._datasets[name]

    def artifact(self, dataset_id: dict[str, Any], poison: dict[str, Any]) -> Path | None:
        if self.cache is None:
            return None
        if self._manifests is None:
            self._manifests = []
            for path in sorted((Path(self.cache) / "poisons").glob("*.json")):
                try:
                    self._manifests.append((path, read_json(path)))
                except BenchError:
                    continue
        want = {k: poison.get(k) for k in ("name", "params", "ratio", "key_fingerprint")}
        if poison.get("revision"):  # an artifact of another algorithm revision is not this record's poison
            want["revision"] = poison["revision"]
        for path, man in self._manifests:
            if isinstance(man, dict) and man.get("dataset") == dataset_id and _with_legacy(man.get("poison")) == want:
                npz = path.with_suffix(".npz")
                if npz.exists():
                    return npz
        return None

    def images(self, rec: dict[str, Any], label: str) -> tuple[Any, Any, list[str]] | None:
        import torch

        from benchmark.data import poison_dataset_id, victim_indices

        cfg = rec["config"]
        proto = cfg.get("protocol") or {}
        data = self._dataset(str(cfg["dataset"]))
        if isinstance(data, BenchError):
            self.warn(f"no sample grid for {label}: {data}")
            return None
        if data.source != cfg.get("dataset_source"):
            self.warn(f"no sample grid for {label}: dataset source is {data.source}, the records used "
                      f"{cfg.get('dataset_source')}")
            return None
        subset = SimpleNamespace(train_subset=int(proto.get("train_subset") or 0),
                                 subset_seed=int(proto.get("subset_seed") or 0))
        train = data.train.subset(victim_indices(data.train, subset)) if subset.train_subset else data.train
        dataset_id = poison_dataset_id(data, train, subset.train_subset, subset.subset_seed)
        poison = cfg["poison"]
        npz = self.artifact(dataset_id, poison)
        if npz is not None:
            from benchmark.poisoning import images_path
            from benchmark.store import open_npy

            try:
                arrays = read_npz(npz, required=("poisoned_indices",))
                mapped = None if "x_train" in arrays else open_npy(images_path(npz))  # a memory-mapped artifact
            except BenchError as exc:
                self.warn(f"no sample grid for {label}: {exc}")
                return None
            allowed = torch.zeros(len(train), dtype=torch.bool)
            allowed[torch.from_numpy(arrays["poisoned_indices"].astype("int64"))] = True
            idx = self._pick(train.y, allowed)
            rows = idx.numpy()
            px = torch.from_numpy(mapped[rows].copy() if mapped is not None
                                  else arrays["x_train"][rows].transpose(0, 3, 1, 2).copy())
            return train.x[idx], px, [train.classes[int(c)] if train.classes else str(int(c)) for c in train.y[idx]]
        return self._recreate(train, poison, cfg, label)

    @staticmethod
    def _pick(y: Any, allowed: Any) -> Any:
        import torch

        picks = []
        for c in torch.unique(y).tolist()[:MAX_SAMPLE_CLASSES]:
            hits = torch.nonzero((y == c) & allowed).flatten()
            if hits.numel():
                picks.append(int(hits[0]))
        return torch.tensor(picks, dtype=torch.long)

    def _recreate(self, train: Any, poison: dict[str, Any], cfg: dict[str, Any], label: str) -> Any:
        import torch

        from attacks.base import PoisonContext, key_fingerprint
        from benchmark.poisoning import build_poison, seed_key
        from benchmark.registry import POISONS

        try:
            cls = POISONS.get(poison["name"])
        except BenchError as exc:
            self.warn(f"no sample grid for {label}: {exc}")
            return None
        if not _is_cheap(cls):
            self.warn(f"no sample grid for {label}: no cached poison artifact, and re-creating '{poison['name']}' "
                      "needs surrogate training (keep the cache or run `bench poison` first)")
            return None
        candidates = list(dict.fromkeys([seed_key(int(cfg.get("seed") or 0)), 0]))  # the key a seed draws
        if os.environ.get("BENCH_POISON_KEY", "").isdigit():
            candidates.insert(0, int(os.environ["BENCH_POISON_KEY"]))
        fp = poison.get("key_fingerprint")
        key = next((k for k in candidates if fp is None or key_fingerprint(k) == fp), None)
        if key is None:
            self.warn(f"no sample grid for {label}: the poison key is private (set BENCH_POISON_KEY to the key "
                      "with fingerprint " + str(fp) + ")")
            return None
        try:
            spec = build_poison(poison["name"], poison.get("params") or {}, key, 1.0, str(cfg.get("preset")))
            idx = self._pick(train.y, torch.ones(len(train), dtype=torch.bool))
            sub = train.subset(idx)
            ctx = PoisonContext(key=key, ratio=1.0, device=torch.device("cpu"), preset=str(cfg.get("preset")),
                                num_classes=train.num_classes)
            out = spec.poison.generate(sub, ctx)
        except (BenchError, RuntimeError, ValueError) as exc:
            self.warn(f"no sample grid for {label}: re-creating the poison failed ({exc})")
            return None
        return sub.x, out.x.cpu(), [train.classes[int(c)] if train.classes else str(int(c)) for c in sub.y]




# -------------------------------------------------------------------------------------- sidecars

def grid_identity(rec: dict[str, Any]) -> dict[str, Any]:
    """What a sample grid shows: the dataset and the poison (name, params, revision, key fingerprint,
    ratio) of the record it was made for."""
    cfg = rec["config"]
    poison = cfg["poison"]
    return {"dataset": cfg.get("dataset"), "dataset_source": cfg.get("dataset_source"),
            "train_size": cfg.get("train_size"), "poison": poison.get("name"), "params": poison.get("params") or {},
            "revision": poison.get("revision") or 1, "key_fingerprint": poison.get("key_fingerprint"),
            "ratio": poison.get("ratio", 1.0)}


def sidecar(png: Path) -> Path:
    return png.with_name(png.name + ".json")


def write_grid_sidecar(png: Path, identity: dict[str, Any]) -> Path:
    """``<grid>.png.json`` beside a sample grid: the identity of the poison drawn in it."""
    path = sidecar(png)
    text = json.dumps(identity, sort_keys=True, indent=1) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def grid_sidecar_problem(png: Path, identity: dict[str, Any], also: Iterable[dict[str, Any]] = ()) -> str | None:
    """Why an existing grid must not be shown for ``identity`` (one line), or None when its sidecar
    says it shows exactly that poison (or one of ``also``: other records pooled under the same label)."""
    path = sidecar(png)
    if not path.is_file():
        return f"no {path.name} says which poison it shows"
    try:
        made_for = read_json(path)
    except BenchError:
        return f"{path.name} is unreadable"
    if not isinstance(made_for, dict):
        return f"{path.name} is not a JSON object"
    if any(canonical_json(made_for) == canonical_json(other) for other in also):
        return None
    changed = sorted(k for k in set(identity) | set(made_for)
                     if canonical_json(made_for.get(k)) != canonical_json(identity.get(k)))
    if changed:
        return f"it was made for another poison ({', '.join(changed)} differ from the records')"
    return None


def sample_grids(g: pd.DataFrame, records: dict[str, dict[str, Any]], title: str, stem: Path,
                 source: SampleSource) -> dict[str, Path]:
    """{poison label: grid path} for one group's poisons (full-ratio records preferred)."""
    chosen: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[dict[str, Any]]] = {}
    runs = g[g["poison"] != "none"].sort_values(["full", "run_id"], ascending=[False, True], kind="stable")
    for _i, run in runs.iterrows():
        rec, label = records[run["record"]], str(run["poison_label"])
        if label not in chosen:
            chosen[label] = rec
            pooled[label] = []
        if bool(run["full"]) == _full(chosen[label]):
            pooled[label].append(grid_identity(rec))
    out = {}
    for label in sorted(chosen):
        path = Path(f"{stem}-samples-{slug(label)}.png")
        identity = grid_identity(chosen[label])
        got = source.images(chosen[label], f"{title} / {label}")
        if got is not None:
            clean, poisoned, classes = got
            out[label] = plot_samples(clean, poisoned, classes, f"{label} on {title}", path)
            write_grid_sidecar(path, identity)
        elif path.is_file() and path.stat().st_size > 0:
            # keep a grid made where the data and the poison cache were at hand, but only if it shows this
            # poison: a label's file name stays the same when its params, revision or key change
            if (problem := grid_sidecar_problem(path, identity, pooled[label])) is None:
                source.warn(f"kept the existing sample grid {path}")
                out[label] = path
            else:
                source.warn(f"not showing the existing sample grid {path}: {problem}")
    return out


def _full(rec: dict[str, Any]) -> bool:
    p = rec["config"]["poison"]
    return p["name"] == "none" or (float(p.get("ratio", 1.0)) >= 1.0 and not p.get("clean_only"))
