"""LoRA adapters: broken adapter configs are refused with one clear error before any resource
exists, and a good one becomes the `vllm serve` flags vLLM's own parser accepts."""
from __future__ import annotations

import json

import pytest

from fleet import vllm_command
from fleet.config.load import parse_config
from fleet.config.schema import HF_CACHE_MOUNT, Model
from support.refusals import assert_refused_before_any_resource, model
from support.stacks import raw_stack
from support.vllm_cli import parse_serve_args

ADAPTER = {"name": "sql", "source": "org/sql-lora"}


def lora(i=0, **kw):
    """Give models[i] a `lora` section (one adapter unless `adapters` says otherwise)."""
    def mutate(raw):
        raw["models"][i]["lora"] = {"adapters": [dict(ADAPTER)], **kw}
    return mutate


def adapters(*items, i=0, **kw):
    def mutate(raw):
        raw["models"][i]["lora"] = {"adapters": [dict(a) for a in items], **kw}
    return mutate


def both(*mutations):
    def mutate(raw):
        for m in mutations:
            m(raw)
    return mutate


def second_model(raw):
    """prod has two GPU models; local one CPU model: give local a second one to share names with."""
    raw["models"].append({**model(raw), "name": "tiny", "hf_id": "org/tiny", "replicas": 1})


CASES = [
    # (case, base stack, mutation, key in the message, a fragment of the problem or allowed text)
    ("no adapters in a lora section", "local", lora(adapters=[]), "models[0].lora.adapters", "at least 1"),
    ("an adapter without a source", "local", adapters({"name": "sql"}), "models[0].lora.adapters[0].source", "required"),
    ("an adapter name with a space", "local", adapters({**ADAPTER, "name": "my adapter"}),
     "models[0].lora.adapters[0].name", "pattern"),
    ("a rank vLLM does not allow", "local", lora(max_lora_rank=12), "models[0].lora.max_lora_rank", "320"),
    ("max_loras of zero", "local", lora(max_loras=0), "models[0].lora.max_loras", ">= 1"),
    ("max_cpu_loras below max_loras", "local", lora(max_loras=4, max_cpu_loras=2), "models[0].lora.max_cpu_loras",
     "below max_loras"),
    ("unknown lora key", "local", lora(max_rank=8), "models[0].lora.max_rank", "did you mean `max_lora_rank`"),
    ("two adapters of one model share a name", "local", adapters(ADAPTER, {"name": "sql", "source": "org/other"}),
     "models[0].lora.adapters[1].name", "an adapter of model `qwen`"),
    ("adapters of two models share a name", "prod", both(lora(0), lora(1)), "models[1].lora.adapters[0].name",
     "an adapter of model `llama-70b`"),
    ("an adapter named as its model's served name", "local", adapters({**ADAPTER, "name": "Qwen/Qwen2.5-0.5B-Instruct"}),
     "models[0].lora.adapters[0].name", "the served name of model `qwen`"),
    ("an adapter named as another model's served name", "local",
     both(second_model, adapters({**ADAPTER, "name": "org/tiny"})), "models[0].lora.adapters[0].name",
     "the served name of model `tiny`"),
    ("an adapter named as a model's route", "local", both(second_model, adapters({**ADAPTER, "name": "tiny"})),
     "models[0].lora.adapters[0].name", "`/models/tiny/` route"),
    ("a source neither an id nor a path", "local", adapters({**ADAPTER, "source": "sql-lora"}),
     "models[0].lora.adapters[0].source", "neither a Hugging Face id"),
    ("a relative path as source", "local", adapters({**ADAPTER, "source": "adapters/sql/v1"}),
     "models[0].lora.adapters[0].source", "neither a Hugging Face id"),
    ("a path that climbs out of the cache", "local", adapters({**ADAPTER, "source": f"{HF_CACHE_MOUNT}/../../etc"}),
     "models[0].lora.adapters[0].source", "not a normalised path"),
    ("a path outside the cache mount", "local", adapters({**ADAPTER, "source": "/srv/adapters/sql"}),
     "models[0].lora.adapters[0].source", "outside the replicas' Hugging Face cache mount"),
    ("LoRA flags in extra_args", "local", lambda r: model(r).update(extra_args=["--max-loras", "4"]),
     "models[0].extra_args[0]", "set from the stack config"),
    ("--enable-lora in extra_args", "local", lambda r: model(r).update(extra_args=["--enable-lora"]),
     "models[0].extra_args[0]", "set from the stack config"),
    ("LoRA and speculation with too few batched tokens", "staging",
     both(lora(), lambda r: model(r).update(speculative={"method": "ngram", "num_speculative_tokens": 3,
                                                         "prompt_lookup_max": 4},
                                            max_num_seqs=256, max_num_batched_tokens=512)),
     "models[0].max_num_batched_tokens", "x (num_speculative_tokens + 1) = 1024"),
]


@pytest.mark.parametrize("case, stack, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_broken_adapter_config_is_refused_before_any_resource(case, stack, mutate, key, fragment):
    raw = raw_stack(stack)
    mutate(raw)
    assert_refused_before_any_resource(case, stack, raw, key, fragment)


def local_with(lora_section: dict, extra_models: list[dict] = ()):
    raw = raw_stack("local")
    raw["models"][0]["lora"] = lora_section
    raw["models"] += list(extra_models)
    return parse_config(raw, "local")


def test_every_model_lists_the_names_clients_reach_it_by_served_name_first():
    cfg = local_with({"adapters": [ADAPTER, {"name": "chat-de", "source": f"{HF_CACHE_MOUNT}/adapters/de"}]},
                     [{"name": "tiny", "hf_id": "org/tiny", "served_model_name": "tiny-chat", "device": "cpu"}])
    assert cfg.client_names() == {"qwen": ["Qwen/Qwen2.5-0.5B-Instruct", "sql", "chat-de"], "tiny": ["tiny-chat"]}
    assert cfg.models[0].adapter_names == ["sql", "chat-de"] and cfg.models[1].adapter_names == []


def test_a_path_elsewhere_is_accepted_from_a_custom_image():
    raw = raw_stack("local")
    model(raw).update(image="registry.example/vllm-cpu-adapters:1.0",
                      lora={"adapters": [{**ADAPTER, "source": "/opt/adapters/sql"}]})
    assert parse_config(raw, "local").models[0].lora.adapters[0].source == "/opt/adapters/sql"


def serve(m: Model) -> list[str]:
    return vllm_command.serve_args(m, port=8000)


def test_adapters_become_lora_flags_that_vllms_parser_reads_as_meant():
    m = Model(name="qwen", hf_id="Qwen/Qwen2.5-0.5B-Instruct", device="cpu",
              lora={"adapters": [ADAPTER, {"name": "chat-de", "source": f"{HF_CACHE_MOUNT}/adapters/de"}],
                    "max_loras": 2, "max_lora_rank": 32, "max_cpu_loras": 4})
    args = serve(m)
    i = args.index("--lora-modules")
    assert args[i + 1:i + 3] == [
        json.dumps({"base_model_name": "Qwen/Qwen2.5-0.5B-Instruct", "name": "sql", "path": "org/sql-lora"},
                   separators=(",", ":")),
        json.dumps({"base_model_name": "Qwen/Qwen2.5-0.5B-Instruct", "name": "chat-de",
                    "path": f"{HF_CACHE_MOUNT}/adapters/de"}, separators=(",", ":"))]
    ns = parse_serve_args(args)
    assert ns.enable_lora is True
    assert [(lm.name, lm.path, lm.base_model_name) for lm in ns.lora_modules] == [
        ("sql", "org/sql-lora", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("chat-de", f"{HF_CACHE_MOUNT}/adapters/de", "Qwen/Qwen2.5-0.5B-Instruct")]
    assert (ns.max_loras, ns.max_lora_rank, ns.max_cpu_loras) == (2, 32, 4)


def test_a_model_without_adapters_gets_no_lora_flag():
    assert not any("lora" in a for a in serve(Model(name="m", hf_id="org/m")))


def test_vllms_defaults_are_written_out_so_the_planner_and_vllm_agree():
    args = serve(Model(name="m", hf_id="org/m", lora={"adapters": [ADAPTER]}))
    assert args[args.index("--max-loras") + 1] == "1" and args[args.index("--max-lora-rank") + 1] == "16"
    assert "--max-cpu-loras" not in args
