"""The documentation's generated reference pages match the code (``tools/reference.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_reference_pages_are_up_to_date() -> None:
    checked = subprocess.run([sys.executable, str(ROOT / "tools" / "reference.py"), "--check"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr + "\n(run: python tools/reference.py)"


def test_the_readme_fits_one_read() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def shell_commands(markdown: str) -> list[list[str]]:
    """The Keisei commands in a page's ``sh`` code blocks, as argument lists (comments and
    line continuations taken out)."""
    import re
    import shlex

    found = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            program = words[0].removeprefix(".venv/bin/")
            if program.startswith("keisei-") or (program == "python" and words[1:2] == ["-m"]):
                found.append([program, *words[1:]])
    return found


def test_every_command_in_the_readme_and_the_tutorial_parses() -> None:
    """A renamed or removed flag in a command the README or the getting-started page shows
    fails here: each is parsed by the command's own parser (nothing runs)."""
    import importlib
    import tomllib

    sys.path.insert(0, str(ROOT / "tools"))
    from reference import command_parser

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = []
    for page in ("README.md", "docs/getting-started.md", "docs/guides/pretraining.md"):
        commands += shell_commands((ROOT / page).read_text())
    assert len(commands) >= 10
    for words in commands:
        if words[0] == "python":
            parser = importlib.import_module(words[2]).build_parser()
            arguments = words[3:]
        else:
            assert words[0] in scripts, f"{words[0]}: no such command"
            parser = command_parser(scripts[words[0]], words[0])
            arguments = words[1:]
        try:
            parser.parse_args(arguments)
        except SystemExit as exc:  # --help and --version exit 0
            if exc.code not in (0, None):
                raise AssertionError(f"{' '.join(words)}: its parser refuses it") from exc
