"""Ports and paths every target shares: what the containers listen on and where Nginx reads its
config. Neutral values, no logic; `fleet.vllm_command` holds vLLM's own (API_PORT, OTEL_PORT)."""

NGINX_PORT = 8080  # the public API, inside the Nginx container or pod
NGINX_STATUS_PORT = 8081  # stub_status, for the exporter and health checks
NGINX_EXPORTER_PORT = 9113
DCGM_PORT = 9400
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
NGINX_CONF_DIR = "/etc/nginx/fleet"
# Stopping Nginx (SIGTERM: graceful quit) lets streams in flight finish.
NGINX_STOP_GRACE_S = 600
