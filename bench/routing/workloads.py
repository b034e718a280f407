"""The three chat workloads, as schedulers of a closed loop: `next()` gives the next request to
send (a `Job`), `done(job, answer)` feeds the answer that actually arrived back into its session.

- W1: many chat sessions, each with its own document (in its first user message); a session sends
  its next turn only after its previous answer arrived, the prompt being every earlier turn and
  answer. A finished session is replaced by a new one (new document), so the number of live
  sessions, and with it the working set, stays constant.
- W2: one long system prompt shared by every request, then conversations of their own (their own
  first user message, a few turns).
- W3: W1, plus one hot conversation (the same system prompt and first user message, e.g. a popular
  document, and a fixed first answer) that sends `hot_share` of all requests, each with a
  different follow-up question.

Sessions are scheduled round-robin (first ready, first sent) and the first sessions start at
staggered turns (their earlier turns filled with deterministic text), so the load reaches its
steady state within the warm-up instead of moving through all sessions' first turns in lockstep.
Everything is a pure function of the sizes and the seeds: every policy gets the same requests.
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field, replace

from bench.routing.text import Text, seed_int

WORKLOADS = ("W1", "W2", "W3")
SYSTEM = "You are a helpful assistant. Answer the user's questions about the document they share."


@dataclass(frozen=True)
class Sizes:
    """One card's sizes (tokens are converted to characters with `chars_per_token`, measured for
    the text of text.py with that card's tokenizer)."""
    card: str
    chars_per_token: float
    sessions: int = 96  # live sessions (W1, W2, W3's non-hot part)
    turns: int = 6
    doc_tokens: int = 2000  # W1/W3: each session's document
    user_tokens: int = 42  # follow-up questions
    out_tokens: tuple[int, int] = (64, 128)  # max_tokens range (ignore_eos: answers are this long)
    concurrency: int = 32
    shared_system_tokens: int = 1500  # W2
    first_user_tokens: int = 200  # W2's own first message
    w2_turns: int = 4
    hot_share: float = 0.3  # W3
    warmup_s: float = 5.0
    measure_s: float = 15.0
    drain_s: float = 60.0  # longest wait for the requests in flight when the window closes
    probe_tokens: int = 1000  # the prefix-cache reset probe

    def chars(self, tokens: int) -> int:
        return int(tokens * self.chars_per_token)


# The lent H200: the routing README's W1 (96 sessions, ~2,000-token documents, 6 turns, 32 in
# flight), 15 s measured after 5 s of warm-up per variant (~23 s a run with the reset and the
# drain): 5 policies x 3 workloads x 2 rounds fit ~12 minutes of a session's device time.
GPU = Sizes("h200", chars_per_token=2.7, warmup_s=5.0, measure_s=15.0)
# This 2-core machine and the tests' tiny model: everything scaled down so 30 variant runs fit
# ~12 minutes; the replicas' KV cache is capped (routing_bench.py) at ~60% of W1's working set.
CPU = Sizes("cpu", chars_per_token=2.1, sessions=24, turns=4, doc_tokens=400, user_tokens=20, out_tokens=(16, 32),
            concurrency=8, shared_system_tokens=300, first_user_tokens=60, w2_turns=3, warmup_s=4.0, measure_s=12.0,
            drain_s=30.0, probe_tokens=300)
SIZES = {"cpu": CPU, "h200": GPU}


@dataclass
class Session:
    id: str
    seed: tuple[int, ...]
    head: list[dict]  # system + first user message
    turns: int
    history: list[dict] = field(default_factory=list)  # earlier user turns and answers
    turn: int = 0  # the next turn to send (0: the first user message)

    def question(self, sizes: Sizes) -> str:
        return Text(*self.seed, 1000 + self.turn).chars(sizes.chars(sizes.user_tokens), question=True)

    def messages(self, sizes: Sizes) -> list[dict]:
        if self.turn == 0:
            return list(self.head)
        return self.head + self.history + [{"role": "user", "content": self.question(sizes)}]

    def answered(self, sizes: Sizes, answer: str) -> None:
        if self.turn > 0:
            self.history.append({"role": "user", "content": self.question(sizes)})
        self.history.append({"role": "assistant", "content": answer})
        self.turn += 1

    @property
    def finished(self) -> bool:
        return self.turn >= self.turns


@dataclass
class Job:
    session_id: str  # what session_affinity's clients send in the session header
    messages: list[dict]
    max_tokens: int
    session: Session | None = None  # None: a one-off request (W3's hot conversation)


def max_tokens(sizes: Sizes, *seed: int) -> int:
    lo, hi = sizes.out_tokens
    return random.Random(seed_int(*seed, 4242)).randint(lo, hi)


def synthetic_answer(sizes: Sizes, *seed: int) -> str:
    """What a staggered session's earlier answers say (a real answer replaces them from then on)."""
    mean = sum(sizes.out_tokens) // 2
    return Text(*seed, 77).chars(sizes.chars(mean))


class Scheduler:
    """The next request of a workload, round-robin over its ready sessions."""

    def __init__(self, workload: str, sizes: Sizes):
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}: one of {', '.join(WORKLOADS)}")
        self.workload, self.sizes = workload, sizes
        self.number = int(workload[1])
        self.ready: collections.deque[Session] = collections.deque()
        self.started = 0  # sessions created so far (their ids and seeds)
        self.sent = 0  # jobs handed out (W3's hot pattern)
        self.hot_sent = 0
        turns = sizes.w2_turns if workload == "W2" else sizes.turns
        for i in range(sizes.sessions):
            s = self._new_session()
            for _ in range(i % turns):  # staggered: session i starts at turn i mod turns
                s.answered(sizes, synthetic_answer(sizes, *s.seed, s.turn))
            self.ready.append(s)

    def _new_session(self) -> Session:
        k, z = self.started, self.sizes
        self.started += 1
        seed = (self.number, k)
        if self.workload == "W2":
            head = [{"role": "system", "content": shared_system(z)},
                    {"role": "user", "content": Text(*seed, 1).chars(z.chars(z.first_user_tokens), question=True)}]
            turns = z.w2_turns
        else:
            head = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": document_message(z, *seed)}]
            turns = z.turns
        return Session(f"{self.workload.lower()}-s{k}", seed, head, turns)

    def _hot_turn(self) -> bool:
        """W3: whether request number `sent` belongs to the hot conversation (an even spread at
        `hot_share`: request n is hot when floor((n+1)*share) > floor(n*share))."""
        n, share = self.sent, self.sizes.hot_share
        return self.workload == "W3" and int((n + 1) * share) > int(n * share)

    def next(self) -> Job | None:
        hot = self._hot_turn()
        if not hot and not self.ready:
            return None  # every session waits for an answer: the caller waits for one
        self.sent += 1
        z = self.sizes
        if hot:
            self.hot_sent += 1
            return Job("w3-hot", hot_messages(z, self.hot_sent), max_tokens(z, 3, 0, self.hot_sent))
        s = self.ready.popleft()
        return Job(s.id, s.messages(z), max_tokens(z, *s.seed, s.turn), s)

    def done(self, job: Job, answer: str | None) -> None:
        """The answer that arrived (None: the request failed; the session sends that turn again)."""
        s = job.session
        if s is None:
            return
        if answer is not None:
            s.answered(self.sizes, answer)
        self.ready.append(self._new_session() if s.finished else s)


def document_message(sizes: Sizes, *seed: int) -> str:
    doc = Text(*seed, 0).chars(sizes.chars(sizes.doc_tokens))
    return f"Here is a document.\n\n{doc}\n\n{Text(*seed, 1000).chars(sizes.chars(sizes.user_tokens), question=True)}"


def shared_system(sizes: Sizes) -> str:
    return SYSTEM + "\n\n" + Text(2, 999_999).chars(sizes.chars(sizes.shared_system_tokens))


def hot_messages(sizes: Sizes, n: int) -> list[dict]:
    """The hot conversation: its fixed document, first question and first answer, then the n-th
    follow-up question."""
    seed = (3, 999_999)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": document_message(sizes, *seed)},
            {"role": "assistant", "content": synthetic_answer(sizes, *seed, 0)},
            {"role": "user", "content": Text(*seed, 5000 + n).chars(sizes.chars(sizes.user_tokens), question=True)}]


def probe_messages(sizes: Sizes) -> list[dict]:
    """The reset probe: text no workload sends."""
    return [{"role": "user", "content": Text(9, 9).chars(sizes.chars(sizes.probe_tokens))}]


def scaled(sizes: Sizes, **changes) -> Sizes:
    return replace(sizes, **changes)
