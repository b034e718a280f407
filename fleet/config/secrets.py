"""The one redaction path: what counts as a secret, and how it is shown.

Secrets come from `pulumi config set --secret` and never reach a message, a rendered file or a
log. Values the program cannot know are secret (a token pasted into `extra_args` or `env`) are
recognised by their shape: the prefixes of the credentials a fleet handles, and long random
strings. `redact()` is what every message and every rendered file goes through.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

SHOWN = "<secret, not shown>"

# Credential formats seen in LLM fleets: Hugging Face, OpenAI-style API keys, GitHub, AWS, Slack,
# Google, JWTs and PEM private keys.
_TOKEN_SHAPES = re.compile(
    r"hf_[A-Za-z0-9]{20,}"
    r"|sk-[A-Za-z0-9_-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
# A long run of URL-safe characters that mixes upper case, lower case and digits is a random key:
# identifiers in what we render (resource names, chart keys, model ids) lack one of the three or
# are broken up by '.', '/' or ':'. Hex runs (image digests, model revisions) are public.
_RANDOM_RUN = re.compile(r"[A-Za-z0-9_-]{32,}")
_MIN_BITS_PER_CHAR = 3.5
_LETTERS_ONLY_BITS = 4.4  # two classes only: as random as a key (our longest identifiers reach ~4.1)
# Variable names that say their value is a credential.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def secret_shapes(text: str) -> list[str]:
    """The substrings of `text` that look like credentials."""
    found = [m.group(0) for m in _TOKEN_SHAPES.finditer(text)]
    for m in _RANDOM_RUN.finditer(text):
        run = m.group(0)
        classes = sum(any(f(c) for c in run) for f in (str.isdigit, str.islower, str.isupper))
        bits = _entropy(run)
        if (classes == 3 and bits >= _MIN_BITS_PER_CHAR) or (classes == 2 and bits >= _LETTERS_ONLY_BITS):
            found.append(run)
    return found


def looks_secret(text: str) -> bool:
    return bool(secret_shapes(text))


def redact(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every known secret value and every credential-shaped substring replaced."""
    for value in sorted((k for k in known if k), key=len, reverse=True):
        text = text.replace(value, SHOWN)
    for shape in sorted(set(secret_shapes(text)), key=len, reverse=True):
        text = text.replace(shape, SHOWN)
    return text
