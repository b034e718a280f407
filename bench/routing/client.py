"""The closed-loop client: `concurrency` connections, each sending streamed `/v1/chat/completions`
(what OpenAI clients send) back to back, the next request taken from a workload's scheduler.

Standard library only (asyncio streams, HTTP/1.1 keep-alive, chunked SSE read as it arrives), so
the same client measures on this machine and on the GPU machine. Timing as the client sees it:
TTFT is request sent -> first chunk with content; output tokens are counted by arrival time, so
the throughput of a window is the tokens that arrived inside it. A chunk can carry several tokens
(vLLM merges the deltas of a request its API server has not sent yet, more so when it is busy):
each chunk counts as the request's `usage.completion_tokens` / chunks.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.routing.workloads import Job, Scheduler


@dataclass
class Result:
    session_id: str
    sent: float  # time.monotonic()
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    status: int = 0
    ok: bool = False
    error: str = ""
    text: str = ""
    chunks: int = 0  # content chunks (one or more tokens each)
    completion_tokens: int = 0  # from the final usage chunk
    prompt_tokens: int = 0
    cached_tokens: int = -1  # usage.prompt_tokens_details.cached_tokens (-1: not reported)


@dataclass
class Window:
    """The measured window in time.monotonic(); tokens arriving inside it are counted."""
    start: float
    end: float
    tokens: float = 0.0
    chunks: int = 0  # content chunks that arrived inside it


async def _read_body(reader: asyncio.StreamReader, head: bytes):
    """The response body as it arrives: chunked, by length, or until the server closes."""
    if b"transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return
            yield (await reader.readexactly(size + 2))[:-2]
    else:
        length = [ln for ln in head.split(b"\r\n") if ln.startswith(b"content-length:")]
        left = int(length[0].split(b":")[1]) if length else -1
        while left != 0:
            data = await reader.read(65536 if left < 0 else min(left, 65536))
            if not data:
                return
            left -= len(data) if left > 0 else 0
            yield data


async def stream_chat(conn: list, host: str, port: int, path: str, body: dict, headers: dict[str, str],
                      result: Result, window: Window | None) -> bool:
    """Send one streamed chat completion on the kept-alive connection `conn` ([reader, writer] or
    [None, None]); fills `result`. Returns whether the connection may be reused."""
    if conn[0] is None:
        conn[:] = await asyncio.open_connection(host, port)
    reader, writer = conn
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{head}"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    t0 = time.monotonic()
    result.sent = t0
    raw = await reader.readuntil(b"\r\n\r\n")
    lowered = raw.lower()
    result.status = int(raw[9:12])
    buf, done, parts, in_window = b"", False, [], 0
    try:
        async for data in _read_body(reader, lowered):
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    data_line = line[6:].strip() if line.startswith(b"data: ") else None
                    if data_line == b"[DONE]":
                        done = True
                    elif data_line and result.status == 200:
                        for piece in _content(json.loads(data_line), result):
                            now = time.monotonic()
                            if not result.chunks:
                                result.ttft_s = now - t0
                            result.chunks += 1
                            parts.append(piece)
                            in_window += window is not None and window.start <= now < window.end
    finally:  # a stream cut short still delivered what arrived
        if in_window:
            window.chunks += in_window
            # usage (when the stream got that far) says how many tokens the chunks carried
            window.tokens += in_window * (result.completion_tokens / result.chunks if result.completion_tokens else 1)
    if result.status != 200:
        result.error = f"HTTP {result.status}: {buf.decode(errors='replace')[:200]}"
    elif not done:
        result.error = "stream ended without [DONE]"
    result.text = "".join(parts)
    result.e2e_s = time.monotonic() - t0
    result.ok = result.status == 200 and done
    return b"connection: close" not in lowered


def _content(msg: dict, result: Result) -> list[str]:
    """The content pieces of one streamed chunk; its usage (the last chunk's) goes into `result`."""
    usage = msg.get("usage")
    if usage:
        result.completion_tokens = usage.get("completion_tokens") or 0
        result.prompt_tokens = usage.get("prompt_tokens") or 0
        result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    pieces = ((c.get("delta") or {}).get("content") or c.get("text") or "" for c in msg.get("choices") or ())
    return [p for p in pieces if p]


@dataclass
class LoopOutcome:
    results: list[Result] = field(default_factory=list)  # requests sent inside the window
    warmup_requests: int = 0
    cut: int = 0  # requests still running when the drain time ran out (counted as errors)
    window: Window | None = None
    t0: float = 0.0
    drained_at: float = 0.0


def request_body(model: str, job: Job) -> dict:
    return {"model": model, "messages": job.messages, "max_tokens": job.max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}


async def closed_loop(url: str, model: str, scheduler: Scheduler, *, concurrency: int, warmup_s: float,
                      measure_s: float, drain_s: float, headers: Callable[[Job], dict[str, str]],
                      on_window_start: Callable[[], None] | None = None) -> LoopOutcome:
    """Run the workload: warm-up, then the measured window; no request is sent after it closes,
    and those in flight get `drain_s` to finish (their latencies count; the rest are cut).
    `on_window_start` runs (in a thread) when the window opens: the replicas' counters are read."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    out = LoopOutcome(t0=time.monotonic())
    out.window = Window(out.t0 + warmup_s, out.t0 + warmup_s + measure_s)
    ready = asyncio.Condition()
    in_flight: list[Result] = []

    async def worker() -> None:
        conn: list = [None, None]
        try:
            while time.monotonic() < out.window.end:
                async with ready:
                    job = scheduler.next()
                    while job is None:
                        await ready.wait()
                        job = scheduler.next()
                res = Result(job.session_id, time.monotonic())
                in_flight.append(res)
                if res.sent >= out.window.start:
                    out.results.append(res)
                else:
                    out.warmup_requests += 1
                try:
                    keep = await stream_chat(conn, host, int(port), "/v1/chat/completions", request_body(model, job),
                                             headers(job), res, out.window)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    res.error, keep = f"{type(e).__name__}: {e}"[:200], False
                in_flight.remove(res)
                if not keep and conn[1] is not None:
                    conn[1].close()
                    conn[:] = [None, None]
                async with ready:
                    scheduler.done(job, res.text if res.ok else None)
                    ready.notify()
        finally:
            if conn[1] is not None:
                conn[1].close()

    async def window_opens() -> None:
        await asyncio.sleep(max(0.0, out.window.start - time.monotonic()))
        if on_window_start is not None:
            await asyncio.to_thread(on_window_start)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    marker = asyncio.create_task(window_opens())
    await asyncio.sleep(max(0.0, out.window.end - time.monotonic()))
    done, pending = await asyncio.wait(tasks, timeout=drain_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await marker
    for res in in_flight:
        res.error = res.error or f"still running {drain_s:.0f} s after the window closed"
        out.cut += 1
    for t in done:
        if t.exception() is not None:
            raise t.exception()
    out.drained_at = time.monotonic()
    return out
