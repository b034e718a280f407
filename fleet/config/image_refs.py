"""Image references: Docker's grammar, and the vLLM release an official image's tag names.

The grammar is distribution/reference's (reference.go, regexp.go), the one `docker pull` and the
kubelet apply: `[host[:port]/]path[:tag][@digest]`, path components lower-case alphanumerics joined
by `.`, `_`, `__` or dashes; a tag `[\\w][\\w.-]{0,127}`; a sha256 digest exactly 64 lower-case hex
digits (go-digest); the name at most 255 characters.

The flags the program adds exist only from some vLLM release on (FLAG_SINCE). An official vLLM
image's tag names its release (`vllm/vllm-openai:v0.17.1`, through any registry mirror); an image
of another repository (a custom build), a tag that is no release (`nightly`) or a bare digest
tells nothing, and then the check does not apply.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from fleet.config.schema import Model

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
TAG = re.compile(r"[\w][\w.-]{0,127}")
SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
NAME_MAX = 255


@dataclass(frozen=True)
class ImageRef:
    domain: Optional[str]
    path: str
    tag: Optional[str]
    digest: Optional[str]


def parse_ref(ref: str) -> ImageRef:
    """The parts of `ref`; ValueError naming the part that breaks Docker's grammar."""
    if not ref or ref != ref.strip():
        raise ValueError("an empty reference, or spaces around it")
    name, at, digest = ref.partition("@")
    if at:
        if digest.startswith("sha256:") and not SHA256.fullmatch(digest):
            got = f"{len(digest) - 7} characters" if len(digest) != 71 else "other characters"
            raise ValueError(f"a sha256 digest is exactly 64 lower-case hex digits; `{digest}` has {got}")
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"digest `{digest}` is not `algorithm:hex`")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not TAG.fullmatch(tag):
            raise ValueError(f"tag `{tag}` is not `[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}`")
    domain, slash, rest = name.partition("/")
    # Docker's rule: the first component is a registry when it has a `.` or `:`, or is localhost.
    if slash and (("." in domain or ":" in domain) or domain == "localhost"):
        if not re.fullmatch(_DOMAIN, domain):
            raise ValueError(f"registry `{domain}` is not `host[:port]`")
        path = rest
    else:
        domain, path = None, name
    if not _PATH.fullmatch(path):
        raise ValueError(f"repository `{path}` must be lower-case letters, digits and `.`, `_` or `-` "
                         "between them, in `/`-separated components")
    if len(name) > NAME_MAX:
        raise ValueError(f"the name is longer than {NAME_MAX} characters")
    return ImageRef(domain, path, tag, digest or None)


# The official vLLM images, whose tags name vLLM releases (a mirror keeps the repository path).
VLLM_REPOSITORIES = ("vllm/vllm-openai", "q9t5s3a7/vllm-cpu-release-repo", "vllm/vllm-openai-rocm")
_RELEASE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-].*)?")


def vllm_release(ref: str) -> Optional[tuple[int, int, int]]:
    """The vLLM release an official image's tag names; None when the reference does not say."""
    parts = parse_ref(ref)
    if parts.tag is None or not any(parts.path == r or parts.path.endswith("/" + r) for r in VLLM_REPOSITORIES):
        return None
    m = _RELEASE.fullmatch(parts.tag)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


@dataclass(frozen=True)
class FlagSince:
    flag: str
    since: tuple[int, int, int]
    added_when: Callable[[Model], bool]  # when the program adds the flag for this model
    key: str                             # the config key that adds it
    off: str                             # how to leave it out
    source: str


# The flags fleet/vllm_command.py adds that older vLLM releases refuse ("unrecognized arguments").
FLAG_SINCE = (
    FlagSince("--shutdown-timeout", (0, 18, 0), lambda m: m.drain_timeout_s > 0, "drain_timeout_s", "drain_timeout_s: 0",
              "vllm-project/vllm#34730, first released in v0.18.0 (llm-d/llm-d#927)"),
)


def too_old(model: Model) -> Optional[tuple[FlagSince, tuple[int, int, int]]]:
    """The first flag the program adds for `model` that its image's vLLM release lacks."""
    release = vllm_release(model.resolved_image)
    if release is None:
        return None
    for row in FLAG_SINCE:
        if row.added_when(model) and release < row.since:
            return row, release
    return None
