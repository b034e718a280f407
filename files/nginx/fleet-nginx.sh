#!/bin/sh
# managed by vllm-fleet: entry point of the load balancer container.
# The generated nginx.conf arrives in a volume, written by a one-shot config container on every
# `pulumi up` that changes it. This script starts Nginx on it and, when the file changes, checks
# the new config (`nginx -t`) and reloads gracefully: connections in flight finish on the old
# workers, so scaling replicas never replaces this container or drops a request.
set -u
CONF="${FLEET_NGINX_CONF:-/etc/nginx/fleet/nginx.conf}"
INTERVAL="${FLEET_NGINX_POLL_S:-2}"

until [ -s "$CONF" ]; do sleep 1; done
nginx -c "$CONF" -g 'daemon off;' &
NGINX_PID=$!
trap 'nginx -c "$CONF" -s quit; wait "$NGINX_PID"; exit 0' TERM INT QUIT

last=$(md5sum < "$CONF")
while kill -0 "$NGINX_PID" 2>/dev/null; do
    sleep "$INTERVAL" &
    wait $!
    now=$(md5sum < "$CONF" 2>/dev/null) || continue
    [ "$now" = "$last" ] && continue
    last=$now
    if nginx -t -q -c "$CONF"; then
        nginx -c "$CONF" -s reload && echo "vllm-fleet: nginx.conf changed, reloaded" >&2
    else
        echo "vllm-fleet: new nginx.conf rejected by nginx -t; still serving the previous one" >&2
    fi
done
wait "$NGINX_PID"
