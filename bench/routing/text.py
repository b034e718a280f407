"""Deterministic English-like text for documents, prompts and questions.

Same seed, same text on any machine and Python version (only `random.Random`, no hashing of
strings): the benchmark's prompts must be identical for every policy and on both cards. Words
are drawn from a fixed made-up lexicon with a Zipf-like frequency, so the text has the repeats a
real document has (a BPE tokenizer compresses it like prose), not the uniform noise of random ids.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import random

COMMON = ("the of and to a in is that for it on as with was be by this are at from or an not "
          "which have but they one all their has more can will about would there what when other "
          "into some them than these only its over also after first new most could two may such "
          "then how where each many must through between because while again under both same "
          "before since during without another around never").split()
SYLLABLES = [a + b for a, b in itertools.product(
    ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch", "sh"],
    ["a", "e", "i", "o", "u", "ai", "ea", "ou"])]
ENDINGS = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ing", "ed", "er", "tion", "ment", "ly"]


@functools.lru_cache(maxsize=1)
def lexicon(size: int = 12000) -> tuple[str, ...]:
    """Common words first (they get the highest frequencies), then made-up ones."""
    rng = random.Random(20261202)
    words, seen = list(COMMON), set(COMMON)
    while len(words) < size:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))) + rng.choice(ENDINGS)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return tuple(words)


@functools.lru_cache(maxsize=1)
def _cumulative(size: int = 12000) -> tuple[float, ...]:
    acc, out = 0.0, []
    for i in range(size):
        acc += 1.0 / (i + 1) ** 1.05
        out.append(acc)
    return tuple(x / acc for x in out)


def seed_int(*seed: int) -> int:
    """One integer from a tuple of them (`hash()` of a tuple is not promised stable)."""
    return sum(s * 1_000_003 ** i for i, s in enumerate(seed))


class Text:
    """A stream of sentences from one seed (a tuple of ints)."""

    def __init__(self, *seed: int):
        self.rng = random.Random(seed_int(*seed))
        self.words, self.cum = lexicon(), _cumulative()

    def word(self) -> str:
        return self.words[min(bisect.bisect_left(self.cum, self.rng.random()), len(self.words) - 1)]

    def sentence(self, question: bool = False) -> str:
        ws = [self.word() for _ in range(self.rng.randint(6, 20))]
        if self.rng.random() < 0.1:
            ws.insert(self.rng.randint(1, len(ws) - 1), str(self.rng.randint(2, 2999)))
        return " ".join(ws).capitalize() + ("?" if question else self.rng.choice(".....;!"))

    def chars(self, n: int, question: bool = False) -> str:
        """About `n` characters of sentences (whole sentences; paragraphs every 5), ending in `?`
        with `question`."""
        out, size = [], 0
        while size < n:
            s = self.sentence(question and size + 120 >= n)
            out.append(s + ("\n\n" if len(out) % 5 == 4 else " "))
            size += len(out[-1])
        return "".join(out).rstrip()
