"""Additive L-inf noise poisons: key-derived random streams, the exact budget and partial subset, and
the one resumable generation loop of the poisons that craft noise step by step (EM, REM, SEM, TAP).

* Noise is stored as integer grey levels within ±floor(eps·255) (:mod:`benchmark.quantize`), so every
  stored poisoned image meets its L-inf budget exactly (:meth:`NoisePoison.budget_255`).
* All randomness comes from generators derived from the private key and a tag (the step number, the
  epoch...), so a run is reproducible and a resumed run matches an uninterrupted one without saving
  RNG state (:func:`derived_generator`).
* :class:`SteppedNoisePoison` is the generation loop: ``begin`` builds the state, ``craft`` does one
  step, the loop checkpoints the state (surrogate, optimizer, noise, step, counters) under
  ``ctx.workdir`` every ``checkpoint_every`` steps, resumes from it, reports progress, and ``conclude``
  turns the state into levels and facts. The checkpoint carries the elapsed seconds and the session
  count, so a resumed generation reports the seconds of all sessions up to the state it resumed from
  plus its own (work lost after the last checkpoint of an interrupted session is not counted).
* Their noise does not depend on the ratio (only :meth:`NoisePoison.finish` uses it), so
  :mod:`benchmark.poisoning` derives partial poisons from the full-ratio one (``shares_full_noise``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from attacks.base import GenerationSession, Poison, PoisonContext, PoisonedSet, exact_subset
from benchmark.data import ImageSet
from benchmark.io import atomic_write
from benchmark.plugin import P
from benchmark.quantize import add_levels, budget_levels

# ============================================================================== key-derived streams


def derived_seed(key: int, *tags: Any) -> int:
    """A 63-bit seed for one named random stream of a key (e.g. ('rem', 'step', 17))."""
    text = ":".join(str(t) for t in (key, *tags))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def derived_generator(key: int, *tags: Any, device: torch.device | None = None) -> torch.Generator:
    """A generator for one random stream. On a CUDA ``device`` it lives there (no host draws and copies
    in the hot loop; its stream differs from the CPU one); otherwise it is the CPU generator whose
    stream the committed CPU results were made with."""
    seed = derived_seed(key, *tags)
    if device is not None and torch.device(device).type == "cuda":
        return torch.Generator(device=device).manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def uniform(shape: torch.Size | tuple[int, ...], radius: float, gen: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """U(-radius, radius) noise drawn from ``gen`` on the generator's device, then moved to ``device``
    (a no-op when they agree); on CPU the same numbers as ever."""
    return ((torch.rand(shape, generator=gen, device=gen.device) * 2 - 1) * radius).to(device)


# ==================================================================================== checkpoints


class Checkpoint:
    """Atomic, pickle-free generation checkpoints: ``workdir/state.pt`` (None workdir = disabled).

    Each checkpoint also carries the generation seconds spent up to it and the session count, so a
    resumed generation can report its whole cost (:meth:`session`)."""

    def __init__(self, workdir: Any, every: int) -> None:
        self.path = Path(workdir) / "state.pt" if workdir is not None else None
        self.every = every
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # seconds of earlier sessions, up to the state resumed from
        self.sessions = 1

    def load(self, noise_shape: tuple[int, ...] | torch.Size, keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """The saved state if there is a readable one whose noise has ``noise_shape`` and that holds
        ``keys``, else None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is ignored: generation restarts
            return None
        if tuple(state["noise"].shape) != tuple(noise_shape) or any(k not in state for k in keys):
            return None
        self.seconds_before = float(state.get("elapsed_seconds", 0.0))
        self.sessions = int(state.get("sessions", 1)) + 1
        return state

    def due(self, step: int) -> bool:
        return self.path is not None and self.every > 0 and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None:
            state = dict(state, elapsed_seconds=self.seconds_before + time.perf_counter() - self.started,
                         sessions=self.sessions)
            atomic_write(self.path, lambda p: torch.save(state, p))

    def session(self) -> GenerationSession:
        """Sessions so far and the generation seconds of the earlier ones (for the manifest)."""
        return GenerationSession(self.sessions, round(self.seconds_before, 4))


# ===================================================================================== the poisons


class NoisePoison(Poison[P]):
    """Base of the additive L-inf noise poisons: exact budget, exact partial subset, uint8 output."""

    #: name of the params field holding the L-inf radius (in [0,1] units)
    radius_field: ClassVar[str] = "eps"

    def budget_255(self) -> int:
        """The L-inf budget in grey levels that every stored poisoned image meets exactly."""
        return budget_levels(getattr(self.params, self.radius_field))

    def finish(self, train: ImageSet, ctx: PoisonContext, levels: torch.Tensor, info: dict[str, Any],
               session: GenerationSession | None = None) -> PoisonedSet:
        """Add per-sample integer ``levels`` (N,C,H,W) to the exact seeded subset of ``ctx.ratio``
        (the subset that :meth:`Poison.derive` takes from the full-ratio poison)."""
        indices = exact_subset(len(train), ctx.ratio, ctx.key)
        x = train.x.clone()
        if indices.numel():
            sel = indices.to(x.device)
            budget = self.budget_255()
            x[sel] = add_levels(x[sel], levels[sel].to(x.device).clamp(-budget, budget))
        return PoisonedSet(x, train.y.clone(), indices, info=info, session=session)


@dataclass
class Generation:
    """The resumable state of a stepped generation: ``noise``, ``step`` of ``total``, the surrogate and
    its optimizer when it trains, and ``scalars`` (counters, losses, small tensors) that the checkpoint
    saves and restores as they are. Subclasses add what a step needs but need not save (``kw_only``
    fields: the data, a fixed surrogate, ...)."""

    noise: torch.Tensor
    total: int
    model: nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    step: int = 0
    scalars: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"noise": self.noise.cpu(), "step": self.step, **self.scalars}
        if self.model is not None:
            out["model"] = self.model.state_dict()
        if self.opt is not None:
            out["optimizer"] = self.opt.state_dict()
        return out

    def keys(self) -> tuple[str, ...]:
        """What a checkpoint of this state holds (one without them is from other code: ignored)."""
        return ("noise", "step", *self.scalars, *(("model",) if self.model is not None else ()),
                *(("optimizer",) if self.opt is not None else ()))

    def restore(self, state: dict[str, Any]) -> None:
        if self.model is not None:
            self.model.load_state_dict(state["model"])
        if self.opt is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.noise = state["noise"].to(self.noise.device)
        self.step = int(state["step"])
        self.scalars = {name: state[name] for name in self.scalars}


def score_restart(scalars: dict[str, Any], loss: float, done: int, batches: int, restart: int, restarts: int,
                  noise: torch.Tensor) -> None:
    """Restart bookkeeping of forest-style crafting (TAP, gradient matching): sum the batch losses of a
    restart and, after its last batch, keep its noise when its mean loss is the lowest so far (a copy,
    unless no restart follows to overwrite it)."""
    scalars["loss_sum"] += loss
    if done + 1 == batches:
        score = scalars["loss_sum"] / batches
        scalars["scores"].append(round(score, 6))
        if score < scalars["best_score"]:
            scalars["best_score"], scalars["best"] = score, (noise.clone() if restart + 1 < restarts else noise)
        scalars["loss_sum"] = 0.0


def error_progress(err: float) -> dict[str, float]:
    """Progress facts of a surrogate with train error ``err``."""
    return {"acc": round(100.0 * (1.0 - err), 2), "err": round(err, 4)}


class SteppedNoisePoison(NoisePoison[P]):
    """Noise crafted step by step (against a surrogate): one resumable, checkpointed, costed loop.
    Subclasses write ``begin`` (the fresh state), ``craft`` (one step), ``conclude`` (levels and
    facts) and, when the stop is not just ``total`` steps, ``running``. Their params have
    ``checkpoint_every``; the noise ignores the ratio, so partial poisons are derived."""

    shares_full_noise = True

    def begin(self, train: ImageSet, ctx: PoisonContext) -> Generation:
        raise NotImplementedError

    def craft(self, run: Generation) -> None:
        """One step: update ``run`` in place (the loop then advances ``run.step``)."""
        raise NotImplementedError

    def conclude(self, run: Generation) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-image integer levels (N,C,H,W) and the facts for the manifest's ``info``."""
        raise NotImplementedError

    def running(self, run: Generation) -> bool:
        return run.step < run.total

    def progress_info(self, run: Generation) -> dict[str, Any]:
        return {}

    def generate(self, train: ImageSet, ctx: PoisonContext) -> PoisonedSet:
        if ctx.ratio <= 0:
            return self.finish(train, ctx, torch.zeros(0), {})
        ckpt = Checkpoint(ctx.workdir, self.params.checkpoint_every)  # its clock includes ``begin``
        run = self.begin(train, ctx)
        state = ckpt.load(run.noise.shape, run.keys())
        if state is not None:
            run.restore(state)
        while self.running(run):
            self.craft(run)
            run.step += 1
            if ckpt.due(run.step):
                ckpt.save(run.state())
            if ctx.progress is not None:
                ctx.progress(run.step, run.total, self.progress_info(run))
        levels, info = self.conclude(run)
        return self.finish(train, ctx, levels, info, session=ckpt.session())
