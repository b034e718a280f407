"""The one strict Jinja environment that renders every file under `files/`.

Rendering is a pure function of plain values: the Pulumi components and the tests call the same
`render()`, so what the tests feed to nginx/promtool is exactly what gets deployed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import yaml

FILES = Path(__file__).resolve().parents[2] / "files"
HEADER = "managed by vllm-fleet: generated from the stack config, do not edit by hand"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(FILES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_env.filters["to_yaml"] = lambda v: yaml.safe_dump(v, sort_keys=False, default_flow_style=False).rstrip()
_env.filters["to_json"] = lambda v: json.dumps(v)


class TemplateError(Exception):
    """A template failed to render; names the template file and line."""


def render(template: str, **values: Any) -> str:
    try:
        return _env.get_template(template).render(header=HEADER, **values)
    except jinja2.TemplateError as err:
        line = getattr(err, "lineno", None)
        raise TemplateError(f"files/{template}{f':{line}' if line else ''}: {err}") from None


def static(path: str) -> str:
    """A file under `files/` shipped as is."""
    return (FILES / path).read_text()
