"""One variant run, and the interleaved runs of a (workload, round) slice: the part of the benchmark
that is the same here and on the GPU machine.

A run: every replica's prefix cache reset (and the reset proven), the variant's balancer started
fresh (its state, its access log), the closed loop (warm-up, then the measured window), the
replicas' counters read at the window's start and once everything drained, the balancer stopped.
"""
from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, NamedTuple

from bench.routing import accesslog, replicas
from bench.routing.client import closed_loop
from bench.routing.workloads import WORKLOADS, Job, Scheduler, Sizes, probe_messages

POLICIES = ("round_robin", "least_conn", "session_affinity", "prefix_affinity")
ROUTER = "vllm-router cache_aware"
VARIANTS = (*POLICIES, ROUTER)
BOUNDED = "prefix_affinity"  # the one policy `~C` and `@N` apply to (its load_balancer.affinity_* keys)
LOAD_FACTORS = (1.0, 10.0)  # load_balancer.affinity_load_factor's range (fleet/config/schema.py)
_VARIANT = re.compile(rf"{BOUNDED}(?:~(?P<factor>\d+(?:\.\d+)?))?(?:@(?P<bound>\d+))?")


class Variant(NamedTuple):
    policy: str
    load_factor: float | None  # `~C`: load_balancer.affinity_load_factor C
    bound: int | None  # `@N`: load_balancer.affinity_bound N


def split_variant(name: str) -> Variant:
    """`prefix_affinity~1.5@17` -> Variant("prefix_affinity", 1.5, 17): the policy and the
    `affinity_load_factor` (`~C`) and `affinity_bound` (`@N`) it is rendered with, either part
    optional, in that order; a plain name has neither. Raises ValueError for any other `~` or `@`."""
    if "~" not in name and "@" not in name:
        return Variant(name, None, None)
    m = _VARIANT.fullmatch(name)
    factor = float(m["factor"]) if m and m["factor"] else None
    bound = int(m["bound"]) if m and m["bound"] else None
    if not m or (factor is not None and not LOAD_FACTORS[0] <= factor <= LOAD_FACTORS[1]) or bound == 0:
        raise ValueError(f"{name!r}: only {BOUNDED} takes ~C (load_balancer.affinity_load_factor, "
                         f"{LOAD_FACTORS[0]}..{LOAD_FACTORS[1]}) and/or @N (load_balancer.affinity_bound, 1 or more), "
                         f"in that order: e.g. {BOUNDED}~1.5, {BOUNDED}@17, {BOUNDED}~1.5@17")
    return Variant(BOUNDED, factor, bound)


def variant_error(name: str) -> str | None:
    """Why `name` is no variant (None: it is one: a policy, vllm-router, or prefix_affinity~C@N)."""
    try:
        policy = split_variant(name).policy
    except ValueError as e:
        return str(e)
    return None if policy in VARIANTS else f"unknown variant {name!r}: choose from {list(VARIANTS)} or {BOUNDED}~C@N"


def variant_order(names) -> list[str]:
    """`names` in VARIANTS order, each policy's `~C`/`@N` variants after it by C, then N; unknown names last."""
    def key(name: str):
        v = split_variant(name)
        return (VARIANTS.index(v.policy) if v.policy in VARIANTS else len(VARIANTS), v.load_factor or 0, v.bound or 0,
                name)
    return sorted(set(names), key=key)


def affinity_text(settings: dict[str, dict]) -> str:
    """prefix_affinity's bounds per variant as the setup text names them: {variant: {"max_conns":
    [...], "load_factor": C}} -> "prefix_affinity: max_conns 256, load factor 1.25; ..."."""
    return "; ".join(f"{v}: max_conns {'/'.join(map(str, s.get('max_conns') or [])) or '—'}, load factor "
                     f"{s.get('load_factor', '?')}" for v, s in settings.items()) or "none rendered"


def log_file(log_base: Path, kind: str) -> Path:
    """A run's `kind` log: `log_base` (the run's logs' path, no suffix: a variant's name may hold a
    dot, `prefix_affinity~1.5`, so Path.with_suffix would cut it) + `.kind.log`."""
    return log_base.parent / f"{log_base.name}.{kind}.log"


@dataclass
class Target:
    """A variant: `start(logdir)` yields (its URL, its access log or None) while it runs."""
    name: str
    start: Callable[[Path], ContextManager[tuple[str, Path | None]]] | None
    session_header: str | None = None  # sent with the session id (session_affinity only)
    error: str = ""  # why this variant cannot run here (kept as an error row)


@dataclass
class Bench:
    """What every run needs: the replicas (base URLs), the served model name, the client's
    Authorization header (if the replicas check a key), the sizes, and where logs go."""
    replicas: list[str]
    model: str
    auth: dict
    sizes: Sizes
    logdir: Path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run_variant(bench: Bench, target: Target, workload: str, rnd: int, position: int) -> dict:
    record = {"workload": workload, "round": rnd, "variant": target.name, "position": position,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if target.error:
        return {**record, "error": target.error}
    z = bench.sizes
    record["reset"] = replicas.reset_prefix_caches(bench.replicas, bench.model, probe_messages(z), bench.auth)
    scheduler = Scheduler(workload, z)
    at_start: dict = {}

    def window_opens() -> None:
        at_start["metrics"] = replicas.snapshot(bench.replicas)

    def headers(job: Job) -> dict[str, str]:
        return {**bench.auth, **({target.session_header: job.session_id} if target.session_header else {})}

    log_base = bench.logdir / f"{workload}-r{rnd}-{target.name.replace(' ', '_')}"
    with target.start(log_base) as (url, access_log):
        epoch_offset = time.time() - time.monotonic()
        out = asyncio.run(closed_loop(url, bench.model, scheduler, concurrency=z.concurrency, warmup_s=z.warmup_s,
                                      measure_s=z.measure_s, drain_s=z.drain_s, headers=headers,
                                      on_window_start=window_opens))
        replicas.wait_idle(bench.replicas)
        at_end = replicas.snapshot(bench.replicas)
        logged = (accesslog.requests(access_log, out.window.start + epoch_offset, out.window.end + epoch_offset)
                  if access_log else None)
    return {**record, **stats(out, at_start["metrics"], at_end, z.measure_s, logged)}


def stats(out, before: list[dict], after: list[dict], measure_s: float, logged: list[dict] | None) -> dict:
    ok = [r for r in out.results if r.ok]
    errors = [r for r in out.results if not r.ok]
    d = replicas.deltas(before, after)
    hits, queries = sum(x["hits"] for x in d), sum(x["queries"] for x in d)
    finished = [x["finished"] for x in d]
    prompt = sum(r.prompt_tokens for r in ok)
    return {
        "tok_s": out.window.tokens / measure_s,
        "ttft_p50_ms": 1000 * percentile([r.ttft_s for r in ok], 50),
        "ttft_p99_ms": 1000 * percentile([r.ttft_s for r in ok], 99),
        "e2e_p50_s": percentile([r.e2e_s for r in ok], 50),
        "requests": len(out.results), "errors": len(errors), "cut": out.cut, "warmup_requests": out.warmup_requests,
        "error_samples": sorted({r.error for r in errors})[:3],
        "hit_rate": hits / queries if queries else float("nan"), "prefix_hits": hits, "prefix_queries": queries,
        "client_cached_share": sum(max(r.cached_tokens, 0) for r in ok) / prompt if prompt else float("nan"),
        "prompt_tokens_mean": prompt / len(ok) if ok else float("nan"),
        "output_tokens_mean": statistics.mean(r.completion_tokens for r in ok) if ok else float("nan"),
        "chunks_per_request": statistics.mean(r.chunks for r in ok) if ok else float("nan"),
        "window_chunks": out.window.chunks,
        "replica_share": [f / sum(finished) if sum(finished) else float("nan") for f in finished],
        "preemptions": sum(x["preemptions"] for x in d),
        "spill_over": accesslog.spill_over(logged) if logged is not None else None,
        "logged_requests": len(logged) if logged is not None else None,
        "logged_retries": sum(r["retried"] for r in logged) if logged is not None else None,
    }


def rotation(names: list, rnd: int, workload: str) -> list:
    """Round `rnd`'s order for `workload`: the variant list rotated by round and workload, so every
    variant runs early and late."""
    k = (rnd - 1 + WORKLOADS.index(workload)) % len(names)
    return names[k:] + names[:k]


def run_slices(bench: Bench, targets: list[Target], slices: Iterable[tuple[str, int]],
               record: Callable[[dict], None], log: Callable[[str], None] = print,
               deadline: float | None = None, est_s: float = 0.0) -> list[tuple[str, int]]:
    """Run each (workload, round) slice, its variants interleaved; `record` gets each run as it
    finishes. With `deadline` (time.monotonic()), a variant that would end past it (`est_s`) is
    not started; the slices not run to the end are returned."""
    left = []
    for workload, rnd in slices:
        for position, target in enumerate(rotation(targets, rnd, workload)):
            if deadline is not None and time.monotonic() + est_s > deadline:
                log(f"{workload} round {rnd}: no time left for {target.name} and after")
                left.append((workload, rnd))
                break
            try:
                rec = run_variant(bench, target, workload, rnd, position)
            except Exception as e:  # a broken variant is a result, not the end of the run
                rec = {"workload": workload, "round": rnd, "variant": target.name, "position": position,
                       "error": f"{type(e).__name__}: {e}"[:500]}
            record(rec)
            log(line(rec))
    return left


def line(rec: dict) -> str:
    if rec.get("error"):
        return f"{rec['workload']} r{rec['round']} {rec['variant']:24s} ERROR {rec['error'][:200]}"
    spill = "-" if rec["spill_over"] is None else f"{100 * rec['spill_over']['share']:.1f}%"
    return (f"{rec['workload']} r{rec['round']} {rec['variant']:24s} {rec['tok_s']:8.0f} tok/s  TTFT p50 "
            f"{rec['ttft_p50_ms']:7.0f} p99 {rec['ttft_p99_ms']:7.0f} ms  e2e p50 {rec['e2e_p50_s']:6.2f} s  hit "
            f"{100 * rec['hit_rate']:5.1f}%  share {'/'.join(f'{100 * s:.0f}' for s in rec['replica_share'])}  "
            f"spill {spill}  errors {rec['errors']}/{rec['requests']}")

