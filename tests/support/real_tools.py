"""Run the real consumers of what we render: `nginx -t` and `promtool check config`."""
from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from fleet.config.images import NGINX_NJS_MODULE


# Debian's libnginx-mod-http-js (njs 0.7.9) installs the module where nginx.org's images keep theirs.
DEBIAN_NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"


def debian_njs(conf: str) -> str:
    """The rendered nginx.conf loading Debian's njs module instead of the image's."""
    out, n = re.subn(rf"^load_module {re.escape(NGINX_NJS_MODULE)};$", f"load_module {DEBIAN_NJS_MODULE};", conf, flags=re.M)
    if n != 1:
        raise AssertionError(f"expected one `load_module {NGINX_NJS_MODULE};` in the rendered nginx.conf, found {n}")
    return out


def upstream_servers(conf: str) -> dict[str, list[str]]:
    """Each upstream of nginx.conf -> its servers. A model's `<name>_overflow` upstream (prefix
    affinity: where requests wait when every replica is at its bound) must list exactly the same
    servers; it is checked here and left out of the answer."""
    blocks = {name: re.findall(r"server (\S+) max_fails", body)
              for name, body in re.findall(r"upstream (\S+) \{(.*?)\}", conf, re.S)}
    for name, servers in blocks.items():
        if name.endswith("_overflow"):
            assert servers == blocks[name.removesuffix("_overflow")], (name, servers)
    return {name: servers for name, servers in blocks.items() if not name.endswith("_overflow")}


def upstream_hosts(conf: str) -> list[str]:
    """Host names (not IPs) that the config's upstream servers use."""
    names = re.findall(r"^\s*server ([^\s:;]+)", conf, re.M)
    return sorted({n for n in names if not re.fullmatch(r"[0-9.]+", n)})


def nginx_test(conf: str, workdir: Path, beside: Mapping[str, str]) -> subprocess.CompletedProcess:
    """`nginx -t` on `conf` (loading Debian's njs module), with the files it reads `beside` it
    (name -> content). Upstream names resolve through a private /etc/hosts (a mount namespace of
    our own), because nginx resolves them while parsing, as it does at startup."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in beside.items():
        (workdir / name).write_text(text)
    conf_path = workdir / "nginx.conf"
    conf_path.write_text(debian_njs(conf))
    hosts = workdir / "hosts"
    entries = [f"127.0.1.{i + 1} {name}" for i, name in enumerate(upstream_hosts(conf))]
    hosts.write_text("\n".join(["127.0.0.1 localhost", *entries]) + "\n")
    script = f"mount --bind {hosts} /etc/hosts && exec nginx -t -p {workdir} -c {conf_path}"
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
