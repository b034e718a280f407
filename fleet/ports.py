"""Ports and paths every target shares: what the containers listen on and where Nginx reads its
config. Neutral values, no logic; `fleet.vllm_command` holds vLLM's own (API_PORT, OTEL_PORT)."""

NGINX_PORT = 8080  # the public API, inside the Nginx container or pod
NGINX_STATUS_PORT = 8081  # stub_status, for the exporter and health checks
NGINX_TLS_PORT = 8443  # the public API over TLS (load_balancer.tls), inside the Nginx container or pod
NGINX_EXPORTER_PORT = 9113
DCGM_PORT = 9400
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
NGINX_CONF_DIR = "/etc/nginx/fleet"
# Nginx's certificate and key, under the names a `kubernetes.io/tls` Secret gives them (its keys),
# so one rendered nginx.conf reads them on both targets.
NGINX_TLS_DIR = "/etc/nginx/tls"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
# Stopping Nginx (SIGTERM: graceful quit) lets streams in flight finish.
NGINX_STOP_GRACE_S = 600
# An idle keep-alive connection between Nginx and a replica must be closed by Nginx, never by the
# replica: a close racing Nginx's reuse resets that request and benches a healthy replica for
# fail_timeout_s (seen on a GPU run with vLLM's default of 5 s against Nginx's 300 s). vLLM gets a
# longer idle timeout than Nginx's (VLLM_HTTP_TIMEOUT_KEEP_ALIVE); Nginx closes first.
REPLICA_KEEPALIVE_S = 75
NGINX_UPSTREAM_KEEPALIVE_S = 60
