"""A run seed varies the attacker too: without --key, seed s draws poison key s (seed 0 keeps key 0), so
each seed trains on its own poison instance; --key pins one instance for every seed (victim-only spread)."""

from __future__ import annotations

import json

import pytest
from conftest import SMOKE_OVERRIDES, run_cli

from attacks.base import key_fingerprint
from benchmark.poisoning import seed_key
from benchmark.runner import RunSpec, execute, prepare_run
from benchmark.sweep import SweepSpec, plan_sweep


def _run(env: dict, **kw) -> dict:
    spec = RunSpec(preset="smoke", overrides=dict(SMOKE_OVERRIDES), data_root=str(env["data_root"]),
                   cache_dir=str(env["cache"]), results=str(env["results"]), **kw)
    return execute(prepare_run(spec))


def test_seed_key_rule() -> None:
    assert seed_key(0) == 0 and seed_key(2) == 2 and seed_key(2**32 + 3) == 3
    assert seed_key(5, key=0) == 0 and seed_key(0, key=7) == 7  # a given key wins over the seed


@pytest.mark.parametrize("poison", ["cuda", "em"])  # em: its surrogate's init and batch order follow the key
def test_a_seed_draws_its_own_poison_instance(run_env: dict, poison: str) -> None:
    seed0 = _run(run_env, poison=poison, seed=0)
    seed1 = _run(run_env, poison=poison, seed=1)
    pinned = _run(run_env, poison=poison, seed=1, key=0)
    fp0, fp1 = (r["config"]["poison"]["key_fingerprint"] for r in (seed0, seed1))
    assert seed1["config"]["seed"] == 1 and fp1 == key_fingerprint(1) and fp0 == key_fingerprint(0)
    assert seed1["poison"]["digest"] != seed0["poison"]["digest"]  # other bytes: a fresh poison instance
    assert seed1["poison"]["budget"] != seed0["poison"]["budget"]
    # --key pins the instance: seed 1 then trains on seed 0's poisoned set, under its own run id
    assert pinned["config"]["poison"]["key_fingerprint"] == fp0
    assert pinned["poison"]["digest"] == seed0["poison"]["digest"]
    assert len({seed0["run_id"], seed1["run_id"], pinned["run_id"]}) == 3
    for rec in (seed0, seed1, pinned):  # only the fingerprint is written, never the key itself
        assert "key" not in rec["config"]["poison"]


def test_cli_seed_without_key_records_the_seed_key(bench_env: dict, capsys: pytest.CaptureFixture) -> None:
    args = ["run", "--poison", "random-noise", "--preset", "smoke", "--no-baseline", "--epochs", "1",
            "--train-subset", "128", "--test-subset", "100"]
    assert run_cli([*args, "--seed", "2"], capsys)[0] == 0
    assert run_cli([*args, "--seed", "2", "--key", "0"], capsys)[0] == 0
    recs = [json.loads(p.read_text()) for p in sorted(bench_env["results"].glob("*.json"))]
    fps = sorted(r["config"]["poison"]["key_fingerprint"] for r in recs)
    assert fps == sorted([key_fingerprint(2), key_fingerprint(0)])
    assert len({r["poison"]["digest"] for r in recs}) == 2


def test_sweep_seeds_draw_keys_unless_one_is_given(bench_env: dict) -> None:
    def artifacts(key: int | None) -> set[str]:
        sweep = SweepSpec(poisons=["cuda"], seeds=[0, 1, 2], preset="smoke", clean_row=False, key=key,
                          overrides=dict(SMOKE_OVERRIDES), data_root=str(bench_env["data_root"]),
                          cache_dir=str(bench_env["cache"]), results=str(bench_env["results"]))
        return {c.artifact for c in plan_sweep(sweep).cells}

    assert len(artifacts(None)) == 3  # one poison instance per seed
    assert len(artifacts(5)) == 1  # one instance for every seed
