"""``import``: a poisoned training set made elsewhere, in the format its authors publish, validated
against the clean one before any training.

``--poison import --poison-param path=PATH`` with PATH one of (readers in :mod:`benchmark.importing`):

================================  ====================================================================
what the path holds               who publishes it, and how it is read
================================  ====================================================================
``<root>/data/<index>.png``       AR's release zips (psandovalsegura/autoregressive-poisoning,
(or the ``data`` folder itself)   ``AdversarialPoison``), TAP's ``--save poison_dataset``
                                  (lhfowl/adversarial_poisons, ``furnace.export_poison``) and
                                  APBench's exports (lafeat/apbench, ``export_poison``): one RGB PNG
                                  per poisoned image, named by its row in the whole training split;
                                  labels come from the clean set (as those loaders do). TAP writes
                                  only the poisoned images: rows without a file are the clean images
                                  and the files present are the declared poisoned rows.
``poisoned_training_data.npy``    TAP's ``--save numpy``: float64 N x H x W x 3 holding whole grey
(the file, or its folder)         levels 0..255, labels in ``poisoned_training_labels.npy`` (float64).
``train/<class>/<index>.png``     class folders (TAP's ``--save full``, ImageFolder layouts):
                                  ``<class>`` a class name or label number, ``<index>`` the row.
``.npz``                          the ``bench poison`` export: ``x_train`` uint8 N x H x W x C,
                                  ``y_train``, optional ``poisoned_indices`` (without it every row
                                  counts as poisoned).
``.pt`` / ``.pth`` / ``.npy``     an image tensor N x C x H x W or N x H x W x C, uint8, float in
                                  [0, 1] or float grey levels; a ``.pt`` may be a dict with images
                                  under ``x_train`` / ``x`` / ``data`` and labels under ``y_train`` /
                                  ``y`` / ``targets`` / ``labels``.
================================  ====================================================================

Error-minimizing repositories publish the noise, not the images: ``noise=FORMAT`` reads PATH (a
``.pt`` or ``.npy``) as a perturbation, sample-wise (one row per image) or class-wise (one row per
class, indexed by the clean label), N x C x H x W or N x H x W x C, and adds it to the clean set as
that repository's dataset code does (:data:`benchmark.importing.NOISE_FORMATS`):

* ``em``: HanxunH/Unlearnable-Examples' ``perturbation.pt`` (float, [-eps, eps] in [0, 1] pixel units)
  as its ``PoisonCIFAR10`` adds it: ``noise * 255`` clamped to [0, 255] in float32 (negative noise is
  dropped, that repository's issue #13), added to the float32 image, clipped to [0, 255], truncated to
  uint8;
* ``em-signed``: the same perturbation with the noise clamped to [-255, 255] instead, as AR's
  ``UnlearnablePoison`` reads it and as issue #13 says was meant;
* ``rem``: fshp971/robust-unlearnable-examples' and SEM's (liuyixin-louis/Stable-Unlearnable-Example)
  ``*-def-noise.pkl``: int8 levels round(255 * delta), N x 3 x H x W, added in int16, clipped,
  cast to uint8 (``utils/generic.py``). Those files are pickles, which are never loaded: convert them
  to ``.npy`` where the file is trusted (the error message gives the one-liner).

Partial poisons: ``indices=FILE`` (``.npy``, ``.pt`` or ``.txt``; REM's ``data/indices/*/idx-*.pkl``
converted like its noise) names the poisoned rows. A noise is then added at those rows only (REM's
``noise[indices]``); an image file's other rows must equal the clean images. An npz carries its own
``poisoned_indices``. EM draws its partial subset at training time (no file): use ``--ratio``.
CUDA (vinusankars/Convolution-based-Unlearnability), OPS (cychomatica/One-Pixel-Shotcut) and LSP
(dayu11/Availability-Attacks-Create-Shortcuts) make their poisons inside their training scripts and
publish no files; their APBench exports are the flat PNG folders above.

A file holds the run's images or the dataset's whole training split (as poisons are published); for a
preset that trains on a subset, the file's rows of that subset are used. Everything that can be checked
is checked when the run is prepared, before any training (the clean baseline's included):
:meth:`Imported.validate`. That covers layout, dtype and value range, the row count, labels over the
whole file, index files, every PNG's header, and that rows declared clean are clean. Messages name the
file row. A partial file whose rows declared clean nearly all differ by a few grey levels was made from
another copy of the data set (e.g. the original CIFAR-10 files, imported where the clean set is the
JPEG copy): that is said in one line with what to do. ``clean_reference=other`` then trains on the
file's images as they are, takes its declared rows as the poisoned ones, and records the budget as not
measured. A full file made from another copy cannot be told from a poison that changes every image:
pass ``clean_reference=other`` when you know it was.

The poisoned index set is measured (the images that differ from the clean ones); the manifest reports
its L-inf, mean L2, PSNR and SSIM, and ``info`` the largest L2 and the L0 (pixels changed per image).
The sha256 of the file (and of the index file) is the poison's identity, in the cached artifact's id
and the record's ``config.poison.identity``. ``name`` declares where the poison came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks.base import Poison, PoisonContext, PoisonedSet, SplitRows, exact_subset
from benchmark import importing as imp
from benchmark.data import ImageSet
from benchmark.errors import BenchError
from benchmark.params import param
from benchmark.registry import register_poison

PATHS = "a `bench poison` .npz, a folder with data/<index>.png or train/<class>/<index>.png, TAP's numpy export, " \
        "or a .pt/.npy tensor"


@dataclass(frozen=True)
class ImportParams:
    path: str = param("", f"{PATHS} (a .pt is read with weights_only=True); with noise=, the noise tensor")
    name: str = param("", "declared source of the poison, stored in the record (default: the file's name)")
    noise: str = param("", "path holds a published noise, added as that repository does: em (EM perturbation.pt, "
                           "negative noise dropped as its dataset code does), em-signed, rem (REM/SEM int8 levels)",
                       choices=("", *imp.NOISE_FORMATS))
    indices: str = param("", "a partial poison's index file (.npy/.pt/.txt): its poisoned rows")
    clean_reference: str = param("same", "same: the file was made from this clean set (rows declared clean must "
                                         "match it); other: from another copy (e.g. original CIFAR-10 vs the JPEG "
                                         "copy): train on it as it is, budget not measured",
                                 choices=("same", "other"))

    def validate(self, owner: str) -> None:
        if not self.path:
            raise BenchError(f"{owner}: needs --poison-param path=PATH ({PATHS})")
        path = Path(self.path).expanduser()
        kind = imp.file_kind(path, noise=bool(self.noise))
        if self.indices:
            if kind == "npz":
                raise imp.fail(path, "an npz carries its own poisoned_indices; leave out --poison-param indices")
            imp.check_index_file(Path(self.indices).expanduser())


@dataclass
class Loaded:
    """The run's images from the file (N x C x H x W uint8), the positions it declares poisoned (or None)
    and facts for the manifest."""

    x: torch.Tensor
    declared: torch.Tensor | None
    info: dict[str, Any]


@register_poison("import", aliases=("imported",))
class Imported(Poison[ImportParams], budget_type="unbounded"):
    """A poisoned training set or a published noise made elsewhere, read in its authors' format, validated."""

    preview_cheap = False  # only the file (or its cached artifact) can show it
    notes = ("Imported poisons are whatever the file holds: their budget is measured, not declared.",)

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self._identity: dict[str, Any] | None = None
        self._validated: tuple[tuple[Any, ...], Loaded] | None = None  # (images validated, result)

    @property
    def path(self) -> Path:
        return Path(self.params.path).expanduser()

    @property
    def indices_path(self) -> Path | None:
        return Path(self.params.indices).expanduser() if self.params.indices else None

    def cache_identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = {"sha256": imp.file_sha256(self.path, self.indices_path)}
        return self._identity

    def validate(self, train: ImageSet, rows: SplitRows | None = None) -> None:
        """Every check of the file against the clean training set, without training (``bench run``
        calls it when the run is prepared, before the clean baseline). The result is kept for the
        ``generate`` of the same images, so the file is read once per run."""
        self._validated = (self._key(train, rows), self.load(train, rows))

    @staticmethod
    def _key(train: ImageSet, rows: SplitRows | None) -> tuple[Any, ...]:
        return (train.x.data_ptr(), tuple(train.x.shape), None if rows is None else (rows.split_size, rows.indices.data_ptr()))

    def load(self, clean: ImageSet, rows: SplitRows | None = None) -> Loaded:
        path, p = self.path, self.params
        kind = imp.file_kind(path, noise=bool(p.noise))
        content = imp.read_rows(path, kind, clean, noise=bool(p.noise))
        if p.noise:
            return self._noise(path, content, clean, rows)
        if content.pngs is not None:
            return self._pngs(path, content, clean, rows)
        return self._arrays(path, content, clean, rows)

    def _declared(self, path: Path, content: imp.FileRows, count: int) -> torch.Tensor | None:
        """Mask of the rows the file (or its index file) declares poisoned, or None."""
        if content.declared is not None:
            return imp.check_declared(path, content.declared, count)
        if self.indices_path is not None:
            return imp.check_declared(self.indices_path, imp.read_indices(self.indices_path), count, "index file")
        return None

    def _finish(self, path: Path, x_checked: torch.Tensor, ref: imp.Reference, marked: torch.Tensor | None,
                rows: SplitRows | None, info: dict[str, Any]) -> Loaded:
        """Rows declared clean checked (unless the file comes from another copy), the run's images picked."""
        if marked is not None and self.params.clean_reference == "same":
            imp.check_clean_rows(path, x_checked, ref, marked, rows.source if rows is not None else "")
        where = torch.full((int(ref.checked.max()) + 1 if len(ref.checked) else 0,), -1, dtype=torch.long)
        where[ref.checked] = torch.arange(len(ref.checked))
        x = x_checked[where[ref.run_rows]]
        declared = None if marked is None else torch.nonzero(marked[ref.run_rows]).flatten()
        return Loaded(x, declared, info)

    def _arrays(self, path: Path, content: imp.FileRows, clean: ImageSet, rows: SplitRows | None) -> Loaded:
        ref = imp.reference(path, content.count, clean, rows, shape=tuple(content.x.shape))
        x = imp.layout_nchw(path, content.x, tuple(clean.x.shape[1:]))
        imp.check_labels(path, content.labels, ref, content.count)
        marked = self._declared(path, content, content.count)
        x_checked = imp.images_uint8(path, x, ref.checked)
        return self._finish(path, x_checked, ref, marked, rows, {"format": content.kind, "file_images": content.count})

    def _pngs(self, path: Path, content: imp.FileRows, clean: ImageSet, rows: SplitRows | None) -> Loaded:
        """PNG folders: names, headers and labels of every file checked; only the run's rows decoded."""
        files = content.pngs or {}
        flat = content.kind == "png-flat"
        whole = rows is not None and (flat or len(files) == rows.split_size or max(files) >= len(clean))
        size = rows.split_size if whole and rows is not None else len(clean)  # rows of the split, or of the run
        ref = imp.reference(path, size, clean, rows)
        outside = [i for i in files if not 0 <= i < size]
        if outside:
            raise imp.fail(path, f"{files[outside[0]].relative_to(path)}: index {outside[0]} is outside the training "
                                 f"set (0..{size - 1})")
        if not flat:
            missing = next((i for i in range(size) if i not in files), None)
            if missing is not None:
                raise imp.fail(path, f"has {len(files)} of the {size} training images; first missing index {missing}")
            imp.check_labels(path, content.labels, ref, size)
        imp.check_png_headers(path, list(files.values()), tuple(clean.x.shape[1:]))
        marked = self._declared(path, content, size)
        if flat and marked is None and len(files) < size:  # TAP writes only the poisoned images
            marked = torch.zeros(size, dtype=torch.bool)
            marked[torch.tensor(sorted(files))] = True
        run = imp.Reference(clean, torch.arange(len(clean)), torch.arange(len(clean)), file_rows=ref.run_rows)
        has = torch.zeros(size, dtype=torch.bool)
        has[torch.tensor(sorted(files))] = True
        present = torch.nonzero(has[ref.run_rows]).flatten()
        x = clean.x.cpu().clone()
        x[present] = imp.decode_pngs(path, [files[r] for r in ref.run_rows[present].tolist()], tuple(clean.x.shape[1:]))
        run_marked = None if marked is None else marked[ref.run_rows]
        return self._finish(path, x, run, run_marked, rows, {"format": content.kind, "file_images": len(files)})

    def _noise(self, path: Path, content: imp.FileRows, clean: ImageSet, rows: SplitRows | None) -> Loaded:
        """A published noise added to the clean images in its repository's arithmetic."""
        fmt = self.params.noise
        noise = imp.check_noise(path, content.x, fmt)
        split = rows.split_size if rows is not None else len(clean)
        classes = max(clean.num_classes, int(clean.y.max()) + 1 if len(clean) else 0)
        samplewise = content.count in (len(clean), split)
        if not samplewise and content.count != classes:
            raise imp.fail(path, f"holds noise for {content.count} rows; a sample-wise noise has one row per training "
                                 f"image ({len(clean)}" + (f" or {split}" if split != len(clean) else "") +
                           f"), a class-wise one one per class ({classes})")
        noise = imp.layout_nchw(path, noise, tuple(clean.x.shape[1:]), what="noise")
        ref = imp.reference(path, content.count if samplewise else split, clean, rows, what="noise rows")
        marked = self._declared(path, imp.FileRows("noise", content.count), content.count if samplewise else split)
        keep = torch.ones(len(clean), dtype=torch.bool) if marked is None else marked[ref.run_rows]
        sel = torch.nonzero(keep).flatten()
        per_image = noise[ref.run_rows[sel]] if samplewise else noise[clean.y.cpu()[sel]]
        x = clean.x.cpu().clone()
        x[sel] = imp.add_noise(x[sel], per_image, fmt)
        largest = float(noise.to(torch.float64).abs().max()) * imp.NOISE_FORMATS[fmt].unit
        info = {"format": f"noise-{fmt}", "noise": "sample-wise" if samplewise else "class-wise",
                "file_images": content.count, "noise_max_255": round(largest, 3)}
        return Loaded(x, None if marked is None else sel, info)

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        key, loaded = self._validated or (None, None)
        self._validated = None
        if loaded is None or key != self._key(train, ctx.split_rows):
            loaded = self.load(train, ctx.split_rows)
        x, declared = loaded.x, loaded.declared
        clean = train.x.cpu()
        other = self.params.clean_reference == "other"
        differs = (x != clean).flatten(1).any(1)
        if other:  # another copy of the data set: the declared rows (or all) are the poison, as published
            differs = torch.ones(len(train), dtype=torch.bool) if declared is None else \
                torch.zeros(len(train), dtype=torch.bool).index_fill_(0, declared, True)
        subset = exact_subset(len(train), ctx.ratio, ctx.key)
        keep = torch.zeros(len(train), dtype=torch.bool)
        keep[subset] = True
        x = torch.where(keep.view(-1, 1, 1, 1), x, clean)  # ratio < 1: the file's images on a seeded subset
        indices = torch.nonzero(differs & keep).flatten()
        changed_pixels = (x[indices] != clean[indices]).any(dim=1).flatten(1).sum(1).to(torch.float64)
        diff = (x[indices].to(torch.float64) - clean[indices].to(torch.float64)).flatten(1) / 255.0
        info = {
            "source_name": self.params.name or self.path.name,
            **loaded.info,
            "sha256": self.cache_identity()["sha256"],
            "images": len(train),
            "images_changed": int(indices.numel()),
            "declared_poisoned": None if declared is None else int(declared.numel()),
            "clean_reference": self.params.clean_reference,
        }
        if other:
            info["budget_not_measured"] = ("the file was made from another copy of the data set (clean_reference="
                                           "other): its difference to this clean set is not the poison's budget")
        else:
            info.update({
                "l0_max": int(changed_pixels.max()) if indices.numel() else 0,
                "l0_mean": round(float(changed_pixels.mean()), 3) if indices.numel() else 0.0,
                "l2_max": round(float(diff.norm(dim=1).max()), 6) if indices.numel() else 0.0,
            })
        return PoisonedSet(x.to(train.x.device), train.y.clone(), indices, info=info)

