#!/bin/bash
# Lays out the carry folders for the routing benchmark on the lent GPU (run here, in the repo root;
# needs PyPI, the program's venv and the tests' Nginx from `make setup`):
#   .gpu/1/part_aa, .gpu/2/part_ab                       the vLLM 0.26 bundle's chunks (one per call)
#   .gpu/3/part_ac + model/ nginx.tar.xz whl/ nginx/     the last chunk and everything else:
#     model/        the seed architecture with a tokenizer that tokenizes text (make_tokenizer.py)
#     nginx.tar.xz  the tests' Nginx, .tools/nginx (tools/install_test_nginx.sh: Debian 13's nginx and
#                   njs module on their own C library), without gconv and usr/share; device.py
#                   unpacks it into /tmp/nginx and runs /tmp/nginx/bin/nginx
#     whl/          vllm-router and orjson for cp312 (the bundle and the image have its other needs)
#     nginx/        every policy's Nginx files, rendered by the program here (routing_bench.py stage-gpu;
#                   stage.sh's arguments go to it, e.g. --variants least_conn prefix_affinity
#                   prefix_affinity~1.0 prefix_affinity@17)
# `stage.sh --nginx-only [--variants ...]`: with the chunks, model/ and whl/ already staged, only
# nginx.tar.xz and nginx/ anew.
# /.gpu/ is git-ignored; each call carries its folder plus the repo (64 MiB at most).
set -euo pipefail
shared=${SHARED_GPU:-../shared/gpu}
bundle=${BUNDLE:-/tmp/vllm-gpu-bundle}
py=${PY:-.venv/bin/python}
tools_nginx=.tools/nginx
[ -x "$tools_nginx/bin/nginx" ] && [ -f "$tools_nginx/VERSIONS" ] || {
  echo "$tools_nginx (the tests' Nginx) is missing: run \`make setup\` (tools/install_test_nginx.sh $tools_nginx)" >&2
  exit 1
}
pack_nginx() {  # $1: the carry folder
  tar -C "$tools_nginx" -cJf "$1/nginx.tar.xz" --exclude=./root/usr/lib/x86_64-linux-gnu/gconv --exclude=./root/usr/share .
  # Libraries nginx or the njs module would take from this host: the device may lack them.
  local root libs f host
  root=$(realpath "$tools_nginx/root") libs=$(realpath "$tools_nginx/root/usr/lib/x86_64-linux-gnu")
  for f in usr/sbin/nginx usr/lib/nginx/modules/ngx_http_js_module.so; do
    host=$("$libs/ld-linux-x86-64.so.2" --list --library-path "$libs" "$root/$f" | grep '=>' | grep -v "$root" || true)
    [ -z "$host" ] || echo "WARNING: $f loads from outside $tools_nginx (add their packages to tools/install_test_nginx.sh):
$host" >&2
  done
}
if [ "${1:-}" = --nginx-only ]; then  # the chunks, model/ and whl/ already staged
  shift
  last=$(ls -d .gpu/*/ | sort -V | tail -1)
  last=${last%/}
  rm -rf "$last/debs" "$last/nginx"  # debs/: the Debian 12 packages stagings carried before nginx.tar.xz
else
  [ -f "$bundle/parts/part_aa" ] || bash "$shared/build_bundle.sh" "$bundle"
  grep -qx "/.gpu/" .gitignore || { echo "/.gpu/ must be in .gitignore: the carry folders must never be committed"; exit 1; }
  rm -rf .gpu
  parts=("$bundle"/parts/part_*)
  for i in "${!parts[@]}"; do mkdir -p ".gpu/$((i + 1))"; cp "${parts[$i]}" ".gpu/$((i + 1))/"; done
  last=".gpu/${#parts[@]}"
  "$py" "$shared/routing/make_tokenizer.py" "$shared/model" "$last/model"
  mkdir -p "$last/whl"
  orjson=$("$py" -c "import importlib.metadata as m; print(m.version('orjson'))")
  router=$("$py" -c "import importlib.metadata as m; print(m.version('vllm-router'))")
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$last/whl" "vllm-router==$router" "orjson==$orjson" 2> >(grep -v '^WARNING: Location' >&2)
fi
pack_nginx "$last"
"$py" bench/routing_bench.py stage-gpu "$last/nginx" "$@"
chmod -R u+w .gpu
du -sh .gpu/*
