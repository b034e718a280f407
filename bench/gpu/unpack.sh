#!/bin/bash
# Joins the vLLM 0.26 bundle chunks (../shared/gpu/build_bundle.sh) into /tmp/site on the device,
# once per machine, and guards the one unguarded flashinfer import (flashinfer is pruned from the
# bundle) in vLLM's sampler, exactly as ../shared/gpu/run.sh does.
set -u
SITE=${SITE:-/tmp/site}
[ -f "$SITE/.ok" ] && exit 0
mkdir -p /tmp/chunks
for d in "$@"; do cp "$d"/part_* /tmp/chunks/ 2>/dev/null; done
ls -la /tmp/chunks
if command -v xz >/dev/null; then cat /tmp/chunks/part_* | xz -d -T4 | tar -x -C /tmp || { echo EXTRACT_FAIL; exit 1; }
else cat /tmp/chunks/part_* | python3 -c "import tarfile,sys; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp')" || { echo EXTRACT_FAIL; exit 1; }; fi
python3 - <<'PY'
import re
p = '/tmp/site/vllm/v1/sample/ops/topk_topp_sampler.py'; s = open(p).read()
s = re.sub(r'^( *)from vllm\.v1\.attention\.backends\.flashinfer import FlashInferBackend\n',
           lambda m: f"{m.group(1)}try:\n{m.group(1)}    from vllm.v1.attention.backends.flashinfer import FlashInferBackend\n"
                     f"{m.group(1)}except ImportError:\n{m.group(1)}    return False\n", s, count=1, flags=re.M)
open(p, 'w').write(s)
PY
touch "$SITE/.ok"
