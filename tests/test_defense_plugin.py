"""A defense from a separately installed package (entry point ``bench.defenses``) runs with no edit
to this repository, alone and composed with a built-in defense."""

from __future__ import annotations

import json
from pathlib import Path

from plugin_package import bench, install_plugin

SOURCE = '''\
"""A third-party defense, found only through its entry point."""
from dataclasses import dataclass
import torch
from benchmark.params import param
from defenses.base import Defense

@dataclass(frozen=True)
class ShuffleParams:
    p: float = param(0.5, "probability of permuting a batch's colour channels", ge=0.0, le=1.0)

class ChannelShuffle(Defense[ShuffleParams], family="augmentation"):
    """Randomly permutes the colour channels of training batches (test plugin)."""
    def batch(self, x, y, ctx):
        if float(ctx.rand(1)) < self.params.p:
            x = x[:, torch.randperm(x.shape[1], generator=ctx.generator).to(x.device)]
        return x, y
'''


def test_defense_plugin_package_runs_without_editing_repo(tmp_path: Path, bench_env: dict) -> None:
    env = install_plugin(tmp_path, "bench-test-defense-plugin", SOURCE,
                         {"bench.defenses": {"channel-shuffle": "ChannelShuffle"}})
    listing = bench(env, "list", "defenses")
    assert listing.returncode == 0 and "channel-shuffle" in listing.stdout and "p=0.5" in listing.stdout
    base = ["run", "--poison", "cuda", "--preset", "smoke", "--no-baseline", "--protocol-param", "epochs=1"]
    run = bench(env, *base, "--defense", "channel-shuffle", "--defense-param", "p=0.9")
    assert run.returncode == 0, run.stderr
    run = bench(env, *base, "--defense", "channel-shuffle+mixup")
    assert run.returncode == 0, run.stderr
    recs = [json.loads(p.read_text()) for p in bench_env["results"].glob("*.json")]
    assert sorted(r["config"]["defense"]["name"] for r in recs) == ["channel-shuffle", "channel-shuffle+mixup"]
    assert all(r["status"] == "finished" for r in recs)
    assert {r["defense_info"]["family"] for r in recs} == {"augmentation"}
    assert [r["config"]["defense"]["params"] for r in recs if r["config"]["defense"]["name"] == "channel-shuffle"] == [{"p": 0.9}]
    bad = bench(env, *base, "--defense", "channel-shuffle", "--defense-param", "p=2")
    assert bad.returncode == 2 and "'p'=2" in bad.stderr and "Traceback" not in bad.stderr
