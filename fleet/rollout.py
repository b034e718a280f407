"""Rolling replacements: when the next replica of a model may be taken down.

Nginx benches a replica that failed a request for `fail_timeout_s` and only tries it again after
that. A replica replaced during a rollout fails requests while it restarts, so Nginx may still
bench it for up to `fail_timeout_s` after it is healthy again. Taking the next replica down in
that window leaves Nginx no live upstream: every request gets a 502 at once (seen in
tests/live/test_rollouts_live.py). So a rollout waits that long after each replica is healthy:
the Docker target through a rollout gate container, Kubernetes through `minReadySeconds`.
"""
from __future__ import annotations

from fleet.config.schema import FleetConfig

SETTLE_MARGIN_S = 2  # Nginx's bench expiring and its next request reaching the replica

# The gate is a job (fleet/docker/jobs.py) on the load balancer's host, beside Nginx: it waits
# until the replica answers there, then until Nginx's bench on it has expired. `pulumi up` waits
# for it, and fails (stopping the rollout) if the replica does not answer within GATE_TIMEOUT_S.
GATE_TIMEOUT_S = 600
GATE_SCRIPT = (
    'until wget -q -T 5 -O /dev/null "$FLEET_GATE_URL"; do sleep 2; done; '
    'echo "vllm-fleet: $FLEET_GATE_URL answers; next replica in $FLEET_GATE_SETTLE_S s"; '
    'sleep "$FLEET_GATE_SETTLE_S"'
)


def settle_s(cfg: FleetConfig) -> int:
    """Seconds a replica must have been healthy before the next one of its model is taken down."""
    return cfg.load_balancer.fail_timeout_s + SETTLE_MARGIN_S
