"""A defense from a separately installed package (entry point ``bench.defenses``) runs with no edit
to this repository, alone and composed with a built-in defense."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "bench-test-defense-plugin"
        version = "0.0.1"
        [project.entry-points."bench.defenses"]
        channel-shuffle = "bench_test_defense_plugin:ChannelShuffle"
        [tool.setuptools]
        py-modules = ["bench_test_defense_plugin"]
    """,
    "bench_test_defense_plugin.py": '''
        """A third-party defense, found only through its entry point."""
        from dataclasses import dataclass
        import torch
        from benchmark.params import param
        from defenses.base import Defense

        @dataclass(frozen=True)
        class ShuffleParams:
            p: float = param(0.5, "probability of permuting a batch's colour channels", ge=0.0, le=1.0)

        class ChannelShuffle(Defense):
            """Randomly permutes the colour channels of training batches (test plugin)."""
            Params = ShuffleParams
            def batch(self, x, y, ctx):
                if float(ctx.rand(1)) < self.params.p:
                    x = x[:, torch.randperm(x.shape[1], generator=ctx.generator).to(x.device)]
                return x, y
    ''',
}


def test_defense_plugin_package_runs_without_editing_repo(tmp_path: Path, bench_env: dict) -> None:
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    for name, text in PLUGIN.items():
        (pkg / name).write_text(textwrap.dedent(text))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", str(pkg)], check=True, capture_output=True)
    try:
        listing = subprocess.run([sys.executable, "-m", "benchmark.cli", "list", "defenses"],
                                 capture_output=True, text=True, check=True)
        assert "channel-shuffle" in listing.stdout and "p=0.5" in listing.stdout
        base = [sys.executable, "-m", "benchmark.cli", "run", "--poison", "cuda", "--preset", "smoke", "--no-baseline",
                "--protocol-param", "epochs=1"]
        run = subprocess.run(base + ["--defense", "channel-shuffle", "--defense-param", "p=0.9"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        run = subprocess.run(base + ["--defense", "channel-shuffle+mixup"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        recs = [json.loads(p.read_text()) for p in bench_env["results"].glob("*.json")]
        assert sorted(r["config"]["defense"]["name"] for r in recs) == ["channel-shuffle", "channel-shuffle+mixup"]
        assert all(r["status"] == "finished" for r in recs)
        assert [r["config"]["defense"]["params"] for r in recs if r["config"]["defense"]["name"] == "channel-shuffle"] == [{"p": 0.9}]
        bad = subprocess.run(base + ["--defense", "channel-shuffle", "--defense-param", "p=2"], capture_output=True, text=True)
        assert bad.returncode == 2 and "'p'=2" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        subprocess.run(pip + ["uninstall", "-y", "bench-test-defense-plugin"], capture_output=True)
