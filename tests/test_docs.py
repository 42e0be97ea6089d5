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
