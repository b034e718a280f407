"""The README's entry points say clearly what is missing instead of failing obscurely."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(target: str, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_make_up_without_the_pulumi_cli_says_how_to_get_it(tmp_path):
    result = make("up", f"{ROOT}/.venv/bin:/usr/bin:/bin")
    assert result.returncode != 0
    assert "the Pulumi CLI is not installed" in result.stdout + result.stderr


def test_make_up_without_a_docker_daemon_says_so(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pulumi").write_text("#!/bin/sh\necho pulumi must not run >&2; exit 3\n")
    (fake / "docker").write_text("#!/bin/sh\nexit 1\n")  # a client whose daemon does not answer
    for f in fake.iterdir():
        f.chmod(0o755)
    result = make("up", f"{fake}:{ROOT}/.venv/bin:/usr/bin:/bin")
    assert result.returncode != 0
    assert "Docker is not installed or its daemon is not running" in result.stdout + result.stderr
    assert "pulumi must not run" not in result.stderr


def test_make_render_prints_one_clear_error_for_a_broken_stack(tmp_path):
    broken = tmp_path / "Pulumi.broken-test.yaml"
    broken.write_text((ROOT / "stacks/Pulumi.local.yaml").read_text().replace("replicas: 2", "replicas: 0"))
    result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "fleet.offline_render", "broken-test",
                             "--out", str(tmp_path / "out"), "--stacks-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PULUMI_CONFIG_PASSPHRASE": "vllm-fleet-local"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: invalid stack config `vllm-fleet:models[0].replicas` = 0")
