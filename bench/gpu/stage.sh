#!/bin/bash
# Lays out the carry folders for a GPU benchmark session (run here, in the repo root):
#   .gpu/1/part_aa, .gpu/2/part_ab, .gpu/3/part_ac + model/   (/.gpu/ is git-ignored)
# from the vLLM 0.26 bundle that ../shared/gpu/build_bundle.sh builds (~10 min, needs PyPI), and
# renders bench/gpu/variants.json from the program.
set -euo pipefail
shared=${SHARED_GPU:-../shared/gpu}
bundle=${BUNDLE:-/tmp/vllm-gpu-bundle}
[ -f "$bundle/parts/part_aa" ] || bash "$shared/build_bundle.sh" "$bundle"
rm -rf .gpu
parts=("$bundle"/parts/part_*)
for i in "${!parts[@]}"; do mkdir -p ".gpu/$((i + 1))"; cp "${parts[$i]}" ".gpu/$((i + 1))/"; done
last=".gpu/${#parts[@]}"
cp -r "$shared/model" "$last/model"
chmod -R u+w .gpu
git check-ignore -q .gpu || { echo "/.gpu/ must be git-ignored (it is in .gitignore)"; exit 1; }
du -sh .gpu/*
.venv/bin/python -m bench.gpu.variants
