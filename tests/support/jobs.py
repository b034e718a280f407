"""Run a planned job (fleet/docker/jobs.py) on this machine: its own script, with its success mark
moved under the test's directory. A job does not exit when it passes; it leaves the mark."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Mapping

from fleet.docker.container_spec import ContainerSpec
from fleet.docker.jobs import DONE_MARK
from support.processes import start, stop


def start_job(spec: ContainerSpec, env: Mapping[str, str], workdir: Path, *,
              paths: Mapping[str, str] = {}) -> tuple[subprocess.Popen, Path, Path]:
    """`paths`: container paths in the script to replace with local ones. Returns (process, mark, log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mark, log = workdir / "job-done", workdir / "job.log"
    script = spec.command[0].replace(DONE_MARK, str(mark))
    assert script != spec.command[0], "the job's script does not write its success mark"
    for container_path, local in paths.items():
        script = script.replace(container_path, local)
    return start([*spec.entrypoint, script], env=dict(env), log_path=log), mark, log


def wait_job(proc: subprocess.Popen, mark: Path, timeout: float) -> bool:
    """True once the job passed (its mark exists); False if it exited first or ran out of time.
    The job is stopped either way."""
    deadline = time.monotonic() + timeout
    try:
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return mark.exists()
    finally:
        stop(proc, timeout=5)
