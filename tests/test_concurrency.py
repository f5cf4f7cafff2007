"""Concurrent makers of one cache entry, as real `bench run` processes on one cache: N processes that
need one poison artifact (or finetune's default backbone) at once make it once and all use the same
bytes; a maker killed with SIGKILL mid-way hands over to a waiting process, which resumes from the
dead one's checkpoint and ends with what an uninterrupted maker makes.

Contention is made certain, not left to timing: the test holds the entry's lock (as a maker would)
until every process says that it waits for that entry; the killed maker is stopped (SIGSTOP) right
after its first checkpoint, so the kill always lands mid-way, and then killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.locks import exclusive
from benchmark.poisoning import artifact_paths
from benchmark.pretrain import read_backbone
from benchmark.runner import RunSpec, make_context, prepare_run
from defenses.finetune import default_backbone_path

REPO = Path(__file__).resolve().parents[1]
N = 3
#: every process trains one epoch on 128 of the folder's images (the rest is finetune's held-out set)
RUN = ["--preset", "smoke", "--no-baseline", "--epochs", "1", "--train-subset", "128", "--test-subset", "0"]
#: EM that runs all its outer iterations (never stops early), a checkpoint after each
EM = {"max_iters": "4", "stop_error": "0", "checkpoint_every": "1"}
WAIT_S = 120.0  # a bound on waiting for a process to reach a point, not a timing under test


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image folder (4 classes, 16 px): 512 training and 128 test images, decoded once into
    ``datasets`` (linked into every test's cache) so the processes only read it."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("test", 32)):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(40 + 55 * c, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoded")


def _cache(tmp: Path, datasets: Path) -> Path:
    cache = tmp / "cache"
    cache.mkdir(parents=True)
    (cache / "datasets").symlink_to(datasets, target_is_directory=True)
    return cache


class Bench:
    """One `bench run` process, its stdout and stderr in files (read while it runs)."""

    def __init__(self, folder: Path, cache: Path, results: Path, seed: int, name: str, *args: str) -> None:
        self.out, self.err = cache.parent / f"{name}.out", cache.parent / f"{name}.err"
        cmd = [sys.executable, "-m", "benchmark.cli", "run", "--dataset", f"imagefolder:{folder}", *RUN,
               "--seed", str(seed), "--cache-dir", str(cache), "--results", str(results), *args]
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="1000")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self) -> int:
        return self.proc.wait(timeout=WAIT_S)


def _until(what: str, done, procs: list[Bench]) -> None:
    """Poll ``done()`` every 5 ms; fail (with the processes' output) if a process exits first or time runs out."""
    t0 = time.monotonic()
    while not done():
        dead = [p for p in procs if p.proc.poll() is not None]
        if dead or time.monotonic() - t0 > WAIT_S:
            for p in procs:
                p.proc.kill()
            pytest.fail(f"never saw {what}; output:\n" + "\n---\n".join(p.text()[-2000:] for p in dead or procs))
        time.sleep(0.005)


def _waiting_for(procs: list[Bench], entry: Path) -> bool:
    return all("waiting for another process that is making" in (t := p.text()) and entry.stem in t for p in procs)


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def _spec(folder: Path, cache: Path, **kw) -> RunSpec:
    return RunSpec(dataset=f"imagefolder:{folder}", preset="smoke", seed=0, cache_dir=str(cache),
                   results=str(cache.parent / "results"), data_root=str(folder),
                   overrides={"epochs": 1, "train_subset": 128, "test_subset": 0}, **kw)


# ------------------------------------------------------------------------------------------- poisons

def _poison_entry(folder: Path, cache: Path) -> Path:
    prep = prepare_run(_spec(folder, cache, poison="em", poison_params=dict(EM)))
    return artifact_paths(cache, prep.dataset_id, prep.poison)[0]


def _em_args() -> list[str]:
    """One EM artifact for every seed: a fixed --key (without it each seed draws its own poison instance)."""
    return ["--poison", "em", "--key", "0", *(a for k, v in EM.items() for a in ("--poison-param", f"{k}={v}"))]


@pytest.fixture(scope="module")
def contended_poison(folder: Path, datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """N processes (seeds 0..N-1) all waiting for one EM artifact when its lock is let go."""
    cache = _cache(tmp_path_factory.mktemp("poison-n"), datasets)
    results = cache.parent / "results"
    npz = _poison_entry(folder, cache)
    with exclusive(npz, "the test's gate"):
        procs = [Bench(folder, cache, results, seed, f"p{seed}", *_em_args()) for seed in range(N)]
        _until(f"all {N} processes waiting for {npz.stem}", lambda: _waiting_for(procs, npz), procs)
    codes = [p.wait() for p in procs]
    return {"cache": cache, "npz": npz, "procs": procs, "codes": codes, "records": _records(results)}


def test_n_processes_generate_one_poison_once_and_train_on_the_same_bytes(contended_poison: dict) -> None:
    procs, npz = contended_poison["procs"], contended_poison["npz"]
    assert contended_poison["codes"] == [0] * N, [p.text()[-1500:] for p in procs]
    texts = [p.text() for p in procs]
    assert sum(t.count("poison em: generated in") for t in texts) == 1, texts
    assert sum(t.count("poison em: cached") for t in texts) == N - 1, texts
    assert all(f"done waiting for poison artifact {npz.stem}" in t for t in texts)
    manifests = list((contended_poison["cache"] / "poisons").glob("*.json"))
    assert [m.stem for m in manifests] == [npz.stem]
    manifest = json.loads(manifests[0].read_text())
    assert manifest["generation_sessions"] == 1 and not manifest["resumed"]
    records = contended_poison["records"]
    assert sorted(r["config"]["seed"] for r in records) == list(range(N))
    assert {r["poison"]["digest"] for r in records} == {manifest["digest"]}
    assert sum(not r["timings"]["poison_cached"] for r in records) == 1
    assert not list((contended_poison["cache"] / "poison-work").iterdir())  # committed, work cleaned


def test_a_killed_poison_maker_hands_over_and_the_next_resumes_its_checkpoint(
        contended_poison: dict, folder: Path, datasets: Path, tmp_path: Path) -> None:
    cache = _cache(tmp_path, datasets)
    results = tmp_path / "results"
    npz = _poison_entry(folder, cache)
    state = cache / "poison-work" / npz.stem / "state.pt"
    holder = Bench(folder, cache, results, 0, "holder", *_em_args())
    _until("the holder's first checkpoint", state.is_file, [holder])
    holder.proc.send_signal(signal.SIGSTOP)  # mid-way: 1 of 4 iterations checkpointed, the lock held
    waiter = Bench(folder, cache, results, 1, "waiter", *_em_args())
    _until("the second process waiting", lambda: _waiting_for([waiter], npz), [waiter])
    holder.proc.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    assert waiter.wait() == 0, waiter.text()[-2000:]
    assert "poison em: generated in" in waiter.text()
    manifest = json.loads(npz.with_suffix(".json").read_text())
    assert manifest["resumed"] and manifest["generation_sessions"] == 2
    (record,) = _records(results)
    assert record["poison"]["digest"] == manifest["digest"] and record["poison"]["resumed"]
    # resumed exactly: the bytes of the uninterrupted generation
    assert manifest["digest"] == json.loads(contended_poison["npz"].with_suffix(".json").read_text())["digest"]


# ----------------------------------------------------------------------------------- finetune backbone

def _backbone_entry(folder: Path, cache: Path) -> Path:
    prep = prepare_run(_spec(folder, cache, defense="finetune"))
    return default_backbone_path(make_context(prep), prep.protocol.model, prep.protocol.preset)


@pytest.fixture(scope="module")
def contended_backbone(folder: Path, datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """N finetune runs (seeds 0..N-1) all waiting for the default backbone when its lock is let go."""
    cache = _cache(tmp_path_factory.mktemp("backbone-n"), datasets)
    results = cache.parent / "results"
    path = _backbone_entry(folder, cache)
    with exclusive(path, "the test's gate"):
        procs = [Bench(folder, cache, results, seed, f"b{seed}", "--defense", "finetune") for seed in range(N)]
        _until(f"all {N} processes waiting for {path.name}", lambda: _waiting_for(procs, path), procs)
    codes = [p.wait() for p in procs]
    return {"path": path, "procs": procs, "codes": codes, "records": _records(results)}


def test_n_processes_pretrain_one_default_backbone_once_and_start_from_it(contended_backbone: dict) -> None:
    procs, path = contended_backbone["procs"], contended_backbone["path"]
    assert contended_backbone["codes"] == [0] * N, [p.text()[-1500:] for p in procs]
    texts = [p.text() for p in procs]
    assert sum(t.count("pretraining the default small-cnn backbone") for t in texts) == 1, texts
    assert sum(t.count("backbone epoch 3/3") for t in texts) == 1
    records = contended_backbone["records"]
    assert sorted(r["config"]["seed"] for r in records) == list(range(N))
    sources = [r["defense_source"]["finetune"] for r in records]
    assert {s["file"] for s in sources} == {str(path)}
    assert len({s["sha256"] for s in sources}) == 1  # every run started from the same bytes
    assert path.is_file() and not path.with_suffix(".training.pt").exists()


def test_a_killed_backbone_pretraining_hands_over_and_resumes_its_checkpoint(
        contended_backbone: dict, folder: Path, datasets: Path, tmp_path: Path) -> None:
    cache = _cache(tmp_path, datasets)
    results = tmp_path / "results"
    path = _backbone_entry(folder, cache)
    checkpoint = path.with_suffix(".training.pt")
    holder = Bench(folder, cache, results, 0, "holder", "--defense", "finetune")
    _until("the pretraining's first epoch checkpoint", checkpoint.is_file, [holder])
    holder.proc.send_signal(signal.SIGSTOP)  # after epoch 1 of 3, the lock held
    waiter = Bench(folder, cache, results, 1, "waiter", "--defense", "finetune")
    _until("the second process waiting", lambda: _waiting_for([waiter], path), [waiter])
    holder.proc.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    assert waiter.wait() == 0, waiter.text()[-2000:]
    text = waiter.text()
    assert "resuming from its checkpoint" in text
    assert "backbone epoch 1/3" not in text and "backbone epoch 3/3" in text  # epoch 1 was the dead one's
    assert path.is_file() and not checkpoint.exists()
    # resumed exactly: the weights of the uninterrupted pretraining
    resumed, meta, _ = read_backbone(path)
    whole, whole_meta, _ = read_backbone(contended_backbone["path"])
    assert meta == whole_meta and resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
