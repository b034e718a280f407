#!/bin/bash
# Lays out the carry folders for the routing benchmark on the lent GPU (run here, in the repo root;
# needs PyPI, apt and the program's venv):
#   .gpu/1/part_aa, .gpu/2/part_ab                       the vLLM 0.26 bundle's chunks (one per call)
#   .gpu/3/part_ac + model/ debs/ whl/ nginx/            the last chunk and everything else:
#     model/  the seed architecture with a tokenizer that tokenizes text (make_tokenizer.py)
#     debs/   Debian's nginx, nginx-common, libnginx-mod-http-js (unpacked into /tmp/nginx there)
#     whl/    vllm-router and orjson for cp312 (the bundle and the image have its other needs)
#     nginx/  every policy's Nginx files, rendered by the program here (routing_bench.py stage-gpu;
#             stage.sh's arguments go to it, e.g. --variants least_conn prefix_affinity prefix_affinity@17)
# /.gpu/ is git-ignored; each call carries its folder plus the repo (64 MiB at most).
set -euo pipefail
shared=${SHARED_GPU:-../shared/gpu}
bundle=${BUNDLE:-/tmp/vllm-gpu-bundle}
py=${PY:-.venv/bin/python}
[ -f "$bundle/parts/part_aa" ] || bash "$shared/build_bundle.sh" "$bundle"
grep -qx "/.gpu/" .gitignore || { echo "/.gpu/ must be in .gitignore: the carry folders must never be committed"; exit 1; }
rm -rf .gpu
parts=("$bundle"/parts/part_*)
for i in "${!parts[@]}"; do mkdir -p ".gpu/$((i + 1))"; cp "${parts[$i]}" ".gpu/$((i + 1))/"; done
last=".gpu/${#parts[@]}"
"$py" "$shared/routing/make_tokenizer.py" "$shared/model" "$last/model"
mkdir -p "$last/debs" "$last/whl"
(cd "$last/debs" && apt-get download nginx nginx-common libnginx-mod-http-js >/dev/null)
orjson=$("$py" -c "import importlib.metadata as m; print(m.version('orjson'))")
router=$("$py" -c "import importlib.metadata as m; print(m.version('vllm-router'))")
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$last/whl" "vllm-router==$router" "orjson==$orjson" 2> >(grep -v '^WARNING: Location' >&2)
"$py" bench/routing_bench.py stage-gpu "$last/nginx" "$@"
chmod -R u+w .gpu
du -sh .gpu/*
