"""reladiff, the peer of ``reconcile_peers.py``, in a virtual environment of its own.

Installed with pip on first use into ``bench/.venvs/reladiff`` (ignored by git), as a
new user would install it, so its dependencies never meet propagator's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["VENV", "reladiff_executable", "reladiff_version"]

VENV = Path(__file__).resolve().parent / ".venvs" / "reladiff"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def reladiff_executable(spec: str) -> Path:
    """reladiff in a virtual environment of its own, installed with pip on first use."""
    executable = VENV / "bin" / "reladiff"
    if not executable.exists():
        _say(f"installing {spec} into {VENV} (first use)")
        steps = {
            "python -m venv": [sys.executable, "-m", "venv", "--clear", str(VENV)],
            "pip install": [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", spec],
        }
        for what, step in steps.items():
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                said = (done.stderr.strip() or done.stdout.strip() or "?").splitlines()
                errors = [line for line in said if line.startswith("ERROR")]  # not pip's warnings
                raise SystemExit(f"cannot install {spec} ({what}): {(errors or said)[-1]}")
    _say(f"reladiff {reladiff_version(executable)} ({executable})")
    return executable


def reladiff_version(executable: Path) -> str:
    done = subprocess.run([str(executable), "--version"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"reladiff in {VENV} does not run: {done.stderr.strip()[-300:]}")
    return done.stdout.strip().split(" - ")[0].removeprefix("v")
