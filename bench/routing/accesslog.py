"""Reading the rendered Nginx's access log (its `fleet` format): which replica served each chat
request and, where the config logs one, the request's route key (`route=`, prefix_affinity).

Spill-over: for every route key, the requests that went to a replica other than that key's most
frequent one, as a share of all keyed requests. With `hash ... consistent` and `max_conns`, a key
leaves its replica only when that replica is at its bound (or down): this is how often that
happened.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

LINE = re.compile(r'"POST /v1/chat/completions[^"]*" (?P<status>\d{3}) .*?upstream=(?P<upstream>[^ ]+(?:, [^ ]+)*)'
                  r'.*?request_time=(?P<rt>[\d.]+).*?ts=(?P<ts>[\d.]+)')
ROUTE = re.compile(r'\broute="?(?P<route>[^"\s]*)"?')


def requests(log: Path, start_epoch: float, end_epoch: float) -> list[dict]:
    """Chat requests whose start (end time `ts` minus `request_time`) lies in [start, end)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if not m:
            continue
        started = float(m["ts"]) - float(m["rt"])
        if not start_epoch <= started < end_epoch:
            continue
        r = ROUTE.search(line)
        route = r["route"] if r and r["route"] not in ("", "-") else None
        out.append({"status": int(m["status"]), "upstream": m["upstream"].split(", ")[-1], "route": route,
                    "retried": "," in m["upstream"]})
    return out


def spill_over(reqs: list[dict]) -> dict | None:
    """Spill-over of the keyed requests (None when the log carries no route key)."""
    by_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in reqs:
        if r["route"] is not None:
            by_key[r["route"]][r["upstream"]] += 1
    keyed = sum(sum(c.values()) for c in by_key.values())
    if not keyed:
        return None
    spilled = sum(sum(c.values()) - max(c.values()) for c in by_key.values())
    return {"share": spilled / keyed, "keyed_requests": keyed, "keys": len(by_key), "spilled": spilled}


def upstream_share(reqs: list[dict]) -> dict[str, float]:
    count = collections.Counter(r["upstream"] for r in reqs)
    total = sum(count.values()) or 1
    return {k: v / total for k, v in sorted(count.items())}
