"""The README and docs/ hold no typed result numbers, show real output, and say what CI does.

Result numbers live only in generated files (leaderboard.md, results/leaderboard.json). In README.md and
docs/*.md, prose (code spans removed) may hold no decimal number, no percentage and no ±; a fenced block
is either code (bash, python, toml: no percentage, no ±) or the output of a command, marked
``<!-- output: CMD ... -->``, which this test runs and compares with the block, so the numbers in it come
from the records, today.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: pages that other commands' changes write (linked before they land); remove a name once its page exists
PENDING_PAGES: set[str] = set()
CODE = {"bash", "python", "toml"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
OUTPUT_MARK = re.compile(r"<!-- output: (.+?) \(")
PROSE_FORBIDDEN = [
    (re.compile(r"(?<![\w./=-])\d+\.\d+(?![\w./])"), "a decimal number"),
    (re.compile(r"\d\s?%"), "a percentage"),
    (re.compile(r"±"), "a ±"),
]
CODE_FORBIDDEN = PROSE_FORBIDDEN[1:]


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the line before the fence) of every fenced block."""
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((m.group(1), m.group(2), before))
    return out


def typed_numbers(text: str) -> list[str]:
    """Every place in a page that types a result-like number outside a checked output block."""
    found = []
    for lang, body, before in blocks(text):
        if OUTPUT_MARK.search(before):
            continue
        if lang not in CODE:
            found.append(f"a ```{lang or 'plain'} block that is neither code nor a marked command output")
        found += [f"{what} in a code block: {m.group(0)!r}" for pattern, what in CODE_FORBIDDEN
                  for m in pattern.finditer(body)]
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    for line in prose.splitlines():
        found += [f"{what}: {line.strip()!r}" for pattern, what in PROSE_FORBIDDEN if pattern.search(line)]
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_result_number_typed_into_readme_or_docs(page: Path) -> None:
    found = typed_numbers(page.read_text())
    assert not found, f"{page.relative_to(ROOT)} types numbers (quote the leaderboard instead):\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "UEraser reaches 68.5 on clean data.",
    "CUDA without defense: 26 % of the images.",
    "plain training 78 ± 1",
    "```text\naccuracy 30.95\n```\n",
    "```bash\nbench run  # gives 30.95 %\n```\n",
])
def test_the_scanner_catches_typed_numbers(text: str) -> None:
    """The check above can fail: each of these types a number."""
    assert typed_numbers(text)


def test_the_scanner_lets_parameters_and_commands_through() -> None:
    text = ("Use `--defense-param eps=8/255` and `sigma=0.5`; torch==2.14.1 pins it; 80/20 split; 15 epochs.\n"
            "```bash\nbench sweep --seeds 0,1,2 --protocol-param lr=0.1\n```\n")
    assert typed_numbers(text) == []


def test_readme_run_output_is_what_the_command_prints(tmp_path: Path, data_root: Path, cache_dir: Path) -> None:
    """The README's run output is the command's output on the committed records, byte for byte (a copy
    of the records, so a changed run id can never write into the repository)."""
    text = README.read_text()
    (shown,) = [(OUTPUT_MARK.search(before).group(1), body) for _lang, body, before in blocks(text)
                if OUTPUT_MARK.search(before)]
    command, body = shown
    args = shlex.split(command)
    assert args[:2] == ["bench", "run"] and "bench run --poison cuda --defense adaptive" in text
    shutil.copytree(ROOT / "results" / "runs", tmp_path / "results" / "runs",
                    ignore=shutil.ignore_patterns("repeats"))
    env = {**os.environ, "COLUMNS": "80", "BENCH_DATA_ROOT": str(data_root), "BENCH_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmark.cli", *args[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` did not print a finished record's summary within 300 s: its record is gone")
    printed = "\n".join(line.rstrip() for line in (proc.stdout + proc.stderr).splitlines())
    expected = "\n".join(line.rstrip() for line in body.splitlines())
    assert proc.returncode == 0, printed
    assert printed == expected, f"README output is stale; paste this into README.md:\n{printed}"


def _pip_specs(script: str) -> set[str]:
    """The requirement specs of every ``pip install`` in a shell script (flags and comments dropped)."""
    specs = set()
    for line in (ln for ln in script.splitlines() if "pip" in ln.split("#")[0]):
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part)
            if "install" in words and any(w.endswith("pip") for w in words[: words.index("install")]):
                specs.update(w for w in words[words.index("install") + 1:] if not w.startswith("-") or w == "-e")
    return specs - {"-e"}


def _section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_setup_and_test_commands_are_what_ci_runs() -> None:
    readme, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    setup = [b for lang, b, _ in blocks(_section(readme, "Set up")) if lang == "bash"]
    assert len(setup) == 1 and len([ln for ln in setup[0].splitlines() if ln.strip()]) <= 2
    assert _pip_specs(setup[0]) == _pip_specs(ci) - {"pip"}, (_pip_specs(setup[0]), _pip_specs(ci))
    (test_cmd,) = [b.strip() for lang, b, _ in blocks(_section(readme, "Test")) if lang == "bash"]
    ci_cmd = ci.split("# The README's test command:\n", 1)[1].splitlines()[0].strip()
    assert test_cmd == ci_cmd


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_links_between_pages_resolve() -> None:
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and str(path.relative_to(ROOT)) not in PENDING_PAGES:
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_leaderboard_tables_fit_a_laptop() -> None:
    """No table of the committed page is wider than ~200 characters of markdown."""
    wide = [line[:60] for line in (ROOT / "leaderboard.md").read_text().splitlines()
            if line.startswith("|") and len(line) > 200]
    assert not wide, wide
