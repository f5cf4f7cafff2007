"""A third-party plugin package for the entry-point tests, pip-installed into a temporary folder (never
into the interpreter running the tests), and ``bench`` run with that folder on PYTHONPATH: its entry
points are then found exactly as an installed package's are."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
[project]
name = "{name}"
version = "0.0.1"
{entry_points}
[tool.setuptools]
py-modules = ["{module}"]
"""


def install_plugin(tmp_path: Path, name: str, source: str, entry_points: dict[str, dict[str, str]]) -> dict[str, str]:
    """Build package ``name`` (one module, ``source``; ``entry_points``: group -> {entry: object in the
    module}) and install it into ``tmp_path/site``; returns the environment that sees it."""
    module = name.replace("-", "_")
    pkg = tmp_path / "plugin"
    pkg.mkdir()
    groups = "".join(f'[project.entry-points."{group}"]\n' + "".join(f'{k} = "{module}:{v}"\n' for k, v in eps.items())
                     for group, eps in entry_points.items())
    (pkg / "pyproject.toml").write_text(PYPROJECT.format(name=name, module=module, entry_points=groups))
    (pkg / f"{module}.py").write_text(textwrap.dedent(source))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(pkg)], check=True, capture_output=True)
    assert importlib.util.find_spec(module) is None  # the interpreter running the tests is left unchanged
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``bench ARGS`` in a fresh interpreter with ``env``."""
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], capture_output=True, text=True, env=env)
