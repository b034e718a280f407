#!/usr/bin/env bash
# Entry point of the seed-otel image: `vllm serve` under OpenTelemetry's auto-instrumentation.
# The program passes the generated vLLM arguments (model first) to this script, unchanged.
set -euo pipefail

exec opentelemetry-instrument \
  --metrics_exporter prometheus \
  --service_name "${OTEL_SERVICE_NAME:-vllm-api}" \
  vllm serve "$@"
