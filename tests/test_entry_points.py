"""The README's entry points say clearly what is missing instead of failing obscurely."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pulumi._version import version

from support.processes import free_port

from tools import pip_sources, pulumi_cli

ROOT = Path(__file__).resolve().parent.parent

pulumi_version = str(version)


def make(target: str, path: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, **env}
    return subprocess.run(["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A folder of executables named after the keywords, each a shell script body."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def test_make_up_without_the_pulumi_cli_installs_it_and_offline_says_how_to_get_it(tmp_path):
    """No `pulumi` on PATH: `make up` installs the pinned CLI with Pulumi's Automation API. Here the
    download is made to fail on any machine (a proxy on a closed loopback port): one clear error
    that names the version and the manual install, no traceback, nothing installed."""
    fake = fake_bin(tmp_path, docker="exit 0")  # a Docker whose daemon answers
    closed = f"http://127.0.0.1:{free_port()}"
    root = tmp_path / "pulumi-cli"
    result = make("up", f"{fake}:{ROOT}/.venv/bin:/usr/bin:/bin", https_proxy=closed, HTTPS_PROXY=closed,
                  no_proxy="", NO_PROXY="", PULUMI_CLI_ROOT=str(root))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"installing Pulumi {pulumi_version} into {root}" in out
    assert "error: the Pulumi CLI is not installed and could not be downloaded (get.pulumi.com:" in out
    assert f"--version {pulumi_version} --install-root {root} --no-edit-path" in out
    assert "Traceback" not in out
    assert not (root / "bin" / "pulumi").exists()


def test_the_pulumi_cli_is_installed_into_the_project_at_the_sdk_version(tmp_path, monkeypatch):
    """The install path itself, with Pulumi's own `PulumiCommand.install`: only the download of
    get.pulumi.com/install.sh is replaced by a script that installs what the real one would
    (`<root>/bin/pulumi` of the requested version), and the CLI is found there afterwards."""
    import pulumi.automation._cmd as automation_cmd

    def fake_download(url: str, path: str) -> None:
        assert url == "https://get.pulumi.com/install.sh"
        Path(path).write_text(
            '#!/bin/sh\nset -e\necho "$@" >> "%s"\n'
            'while [ $# -gt 0 ]; do case "$1" in --install-root) root=$2; shift;; --version) v=$2; shift;; esac; shift; done\n'
            'mkdir -p "$root/bin"\nprintf \'#!/bin/sh\\necho v%%s\\n\' "$v" > "$root/bin/pulumi"\nchmod +x "$root/bin/pulumi"\n'
            % (tmp_path / "installer-args"))

    monkeypatch.setattr(automation_cmd, "_download_to_file", fake_download)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no pulumi here
    monkeypatch.setenv("PULUMI_CLI_ROOT", str(tmp_path / "cli"))
    assert shutil.which("pulumi") is None
    found = pulumi_cli.ensure_cli()
    assert found == str(tmp_path / "cli" / "bin" / "pulumi")
    assert (tmp_path / "installer-args").read_text().split() == [
        "--no-edit-path", "--install-root", str(tmp_path / "cli"), "--version", pulumi_version]
    assert pulumi_cli.ensure_cli() == found  # a second run finds the project's copy: no new install
    assert len((tmp_path / "installer-args").read_text().splitlines()) == 1


def test_make_up_without_a_docker_daemon_says_so_before_installing_anything(tmp_path):
    fake = fake_bin(tmp_path, pulumi="echo pulumi must not run >&2; exit 3",
                    docker="exit 1")  # a client whose daemon does not answer
    result = make("up", f"{fake}:{ROOT}/.venv/bin:/usr/bin:/bin", PULUMI_CLI_ROOT=str(tmp_path / "cli"))
    assert result.returncode != 0
    assert "Docker is not installed or its daemon is not running" in result.stdout + result.stderr
    assert "pulumi must not run" not in result.stderr
    assert "installing Pulumi" not in result.stderr


def test_make_render_prints_one_clear_error_for_a_broken_stack(tmp_path):
    broken = tmp_path / "Pulumi.broken-test.yaml"
    broken.write_text((ROOT / "stacks/Pulumi.local.yaml").read_text().replace("replicas: 2", "replicas: 0"))
    result = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "tools.offline_render", "broken-test",
                             "--out", str(tmp_path / "out"), "--stacks-dir", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PULUMI_CONFIG_PASSPHRASE": "vllm-fleet-local"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: invalid stack config `vllm-fleet:models[0].replicas` = 0")


# --- installing the test dependencies on any machine ---------------------------------------------


def fresh_machine_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment with pip's configuration as on a fresh machine: no config files and no
    PIP_* variables (this image's pip finds a local wheel folder through both)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, **extra}


def pip_args(env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "tools/pip_sources.py"), str(ROOT / "requirements-test.txt")],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()


def test_on_a_fresh_machine_torch_comes_from_the_pytorch_cpu_index(tmp_path):
    assert pip_args(fresh_machine_env(tmp_path)) == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def test_a_machine_whose_pip_already_has_the_cpu_wheel_needs_no_other_index(tmp_path):
    """A wheel folder that pip is configured with (here through PIP_FIND_LINKS) and that holds the
    pinned torch build: the install stays offline. The wheel is a tiny stand-in with torch's name
    and version, built here."""
    pin = pip_sources.torch_pin(ROOT / "requirements-test.txt")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "torch", pin.split("==")[1])
    assert pip_args(fresh_machine_env(tmp_path, PIP_FIND_LINKS=str(wheels))) == []


def test_no_install_step_names_a_machine_local_wheel_folder():
    for path in ("Makefile", ".ci/run", "requirements.txt", "requirements-test.txt", "policy/requirements.txt"):
        text = (ROOT / path).read_text()
        assert "/opt/" not in text and "find-links" not in text, path


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal valid wheel (metadata only) that pip's resolver accepts as `name==version`."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: vllm-fleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for f, text in files.items():
            whl.writestr(f, text)
    return path
