"""Proving that a proxy passes streamed tokens through unbuffered, on any machine.

Timing a stream cannot prove it: a busy or fast CPU makes vLLM itself emit tokens in bursts, and
a proxy's delay hides in the noise. A lockstep upstream makes time irrelevant: it replays a real
vLLM response (its headers and its server-sent events, recorded from a replica) one event per
HTTP chunk, and sends the next event carrying a token only once the client has parsed the
previous token. A proxy that holds any token back stalls the exchange; after `hold_s` the
upstream notes which token was held and sends the rest without waiting. The client reads as the
official `openai` client (httpx) does: it asks for gzip and decodes whatever encoding it gets.
"""
from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

CLIENT_HEADERS = {"Accept-Encoding": "gzip, deflate", "Accept": "text/event-stream"}  # as httpx sends them


@dataclass(frozen=True)
class Recording:
    headers: list[tuple[str, str]]  # the replica's response headers, in order
    events: list[bytes]  # each server-sent event, `data: ...\n\n`

    @property
    def tokens(self) -> int:
        return sum(map(_event_tokens, self.events))

    @property
    def text(self) -> str:
        return "".join(_text(json.loads(e.removeprefix(b"data: "))) for e in self.events if _event_tokens(e))


def _text(event: Mapping[str, Any]) -> str:
    return "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for c in event.get("choices", []))


def _events(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The server-sent events of a response as they arrive, gzip or deflate decoded."""
    encoding = (resp.getheader("Content-Encoding") or "").lower()
    inflate = zlib.decompressobj({"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]) \
        if encoding else None
    pending = b""
    while True:
        raw = resp.read1(65536)
        if not raw:
            return
        pending += inflate.decompress(raw) if inflate else raw
        *complete, pending = pending.split(b"\n\n")
        yield from (e + b"\n\n" for e in complete if e.strip())


def record(base: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Recording:
    """One real streamed response, as the replica sent it."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        conn.request("POST", path, json.dumps({**body, "stream": True}),
                     {"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        keep = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "content-length")]
        return Recording(keep, list(_events(resp)))
    finally:
        conn.close()


@dataclass
class Exchange:
    tokens: int = 0  # tokens the client parsed
    held: list[int] = field(default_factory=list)  # tokens not at the client within hold_s
    text: str = ""
    status: int = 0


class LockstepUpstream:
    """An HTTP/1.1 server on loopback that answers every POST with `recording` in lockstep with
    the client (see the module docstring). One exchange at a time."""

    def __init__(self, recording: Recording):
        self.recording = recording
        self.hold_s = 0.0
        self.acks: queue.Queue[int] = queue.Queue()
        self.held: list[int] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "LockstepUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        self.thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rfile:
            while self._one_request(conn, rfile):
                pass

    def _one_request(self, conn: socket.socket, rfile) -> bool:
        request_line = rfile.readline()
        if not request_line:
            return False
        length = 0
        while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        rfile.read(length)
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.recording.headers)
        conn.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        lockstep, sent = True, 0
        for event in self.recording.events:
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            if lockstep and _event_tokens(event):
                sent += 1
                try:
                    while self.acks.get(timeout=self.hold_s) < sent:
                        pass
                except queue.Empty:
                    self.held.append(sent)
                    lockstep = False  # held: the rest goes out at once, the client reads it all
        conn.sendall(b"0\r\n\r\n")
        return True

    def exchange(self, base: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str], *,
                 hold_s: float) -> Exchange:
        """Send one streamed request to `base` (a proxy in front of this upstream), parse it as it
        arrives and acknowledge each token to the upstream; a token not acknowledged within
        `hold_s` of being sent counts as held."""
        self.held.clear()
        self.acks = queue.Queue()  # no acknowledgement left over from an earlier exchange
        self.hold_s = hold_s
        out = Exchange()
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.hold_s + 60)
        try:
            conn.request("POST", path, json.dumps({**body, "stream": True}),
                         {"Content-Type": "application/json", **CLIENT_HEADERS, **headers})
            resp = conn.getresponse()
            out.status = resp.status
            for event in _events(resp):
                n = _event_tokens(event)
                if n:
                    out.tokens += n
                    out.text += _text(json.loads(event.removeprefix(b"data: ")))
                    self.acks.put(out.tokens)
        finally:
            conn.close()
        out.held = list(self.held)
        return out


def _event_tokens(event: bytes) -> int:
    """1 if the event carries generated text (one token per event in vLLM's stream), else 0."""
    data = event.removeprefix(b"data: ").strip()
    if data == b"[DONE]":
        return 0
    return 1 if _text(json.loads(data)) else 0
