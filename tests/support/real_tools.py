"""Run the real consumers of what we render: `nginx -t` and `promtool check config`."""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from fleet.config.images import NGINX_NJS_MODULE


# The Nginx the tests run: Debian 13's nginx 1.26 with njs 0.8 (the pinned image has 1.28 with njs
# 0.8.10; Debian 12's njs 0.7.9 lacks shared dictionaries), which `make setup` unpacks here
# (tools/install_test_nginx.sh). Its njs module is not where the image keeps the image's.
TEST_NGINX_DIR = Path(__file__).resolve().parents[2] / ".tools" / "nginx"
TEST_NJS_MODULE = TEST_NGINX_DIR / "root/usr/lib/nginx/modules/ngx_http_js_module.so"


def require_nginx() -> str:
    """The tests' Nginx (a skip without it; in CI a failure: `make setup` installs it)."""
    nginx = TEST_NGINX_DIR / "bin" / "nginx"
    if nginx.exists():
        return str(nginx)
    if os.environ.get("CI"):
        pytest.fail(f"{nginx} is missing: `make setup` installs it")
    pytest.skip(f"{nginx} is missing (run `make setup`)")


def nginx_versions() -> dict[str, str]:
    """The tests' Nginx and njs, as Debian versions: {"nginx": ..., "njs": ...}."""
    lines = (TEST_NGINX_DIR / "VERSIONS").read_text().split("\n")
    versions = dict(line.split(" ", 1) for line in lines if line)
    return {"nginx": versions["nginx"], "njs": versions["libnginx-mod-http-js"]}


def njs_for_tests(conf: str) -> str:
    """The rendered nginx.conf loading the tests' njs module instead of the image's."""
    out, n = re.subn(rf"^load_module {re.escape(NGINX_NJS_MODULE)};$", f"load_module {TEST_NJS_MODULE};", conf, flags=re.M)
    if n != 1:
        raise AssertionError(f"expected one `load_module {NGINX_NJS_MODULE};` in the rendered nginx.conf, found {n}")
    return out


def upstream_servers(conf: str) -> dict[str, list[str]]:
    """Each model's upstream of nginx.conf -> its servers. Under prefix affinity a model also has
    one upstream per replica, `<name>.r<i>`: its i-th server first, every other one a backup. That
    is checked here and left out of the answer."""
    blocks = {name: re.findall(r"server (\S+) max_fails[^;]*?( backup)?;", body)
              for name, body in re.findall(r"upstream (\S+) \{(.*?)\}", conf, re.S)}
    models = {name: [s for s, _ in servers] for name, servers in blocks.items() if "." not in name}
    for name, servers in blocks.items():
        if "." in name:
            model, _, index = name.partition(".r")
            own = models[model][int(index)]
            assert servers[0] == (own, "") and sorted(servers[1:]) == sorted(
                (s, " backup") for s in models[model] if s != own), (name, servers)
    return models


def upstream_hosts(conf: str) -> list[str]:
    """Host names (not IPs) that the config's upstream servers use."""
    names = re.findall(r"^\s*server ([^\s:;]+)", conf, re.M)
    return sorted({n for n in names if not re.fullmatch(r"[0-9.]+", n)})


def nginx_test(conf: str, workdir: Path, beside: Mapping[str, str]) -> subprocess.CompletedProcess:
    """`nginx -t` on `conf` (loading the tests' njs module), with the files it reads `beside` it
    (name -> content). Upstream names resolve through a private /etc/hosts (a mount namespace of
    our own), because nginx resolves them while parsing, as it does at startup."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in beside.items():
        (workdir / name).write_text(text)
    conf_path = workdir / "nginx.conf"
    conf_path.write_text(njs_for_tests(conf))
    hosts = workdir / "hosts"
    entries = [f"127.0.1.{i + 1} {name}" for i, name in enumerate(upstream_hosts(conf))]
    hosts.write_text("\n".join(["127.0.0.1 localhost", *entries]) + "\n")
    script = f"mount --bind {hosts} /etc/hosts && exec {require_nginx()} -t -p {workdir} -c {conf_path}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)


def write_prometheus_tree(files: dict[str, str], root: Path) -> Path:
    """Lay out /etc/prometheus/... from the container's uploads under `root`; returns the config path."""
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root / "etc/prometheus/prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)
