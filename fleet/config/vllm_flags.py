"""`models[].extra_args` read the way the pinned vLLM reads them, and checked before any resource.

The program has no vLLM (requirements.txt): it reads the pinned release's own `vllm serve`
option table, files/vllm/serve-flags-<version>.json, written by `python -m tools.vllm_flags`
from vLLM's parser (a test regenerates it and fails when it is stale). `parse()` normalises the
arguments as vLLM's FlexibleArgumentParser and argparse do (underscores in long flags,
`--flag=value`, unique prefixes, short aliases, `--no-` forms, `--json-flag.key value`, `-O3`)
and `check_extra_args()` refuses, each with one ConfigError naming `models[i].extra_args[j]`:
a credential-shaped value; a flag whose setting the program owns (MANAGED, by canonical dest,
so every spelling counts); an unknown flag; a missing or surplus value; a value outside the
option's choices or type; a flag that needs GPUs or a platform the replica does not have; and
the combinations vLLM refuses at startup that the stack config alone decides (COMBINATIONS).
What this cannot see: the contents of JSON values (checked as JSON only) and anything that
depends on the model's own config (vLLM checks those when the replica starts).
"""
from __future__ import annotations

import difflib
import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from fleet.config.errors import ConfigError
from fleet.config.images import VLLM_VERSION
from fleet.config.schema import Model
from fleet.config.secrets import SHOWN, looks_secret, redact

SNAPSHOT = Path(__file__).resolve().parents[2] / "files" / "vllm" / f"serve-flags-{VLLM_VERSION}.json"
SECRET_FIX = "remove it and set the secret with `pulumi config set --secret hf_token` (or `api_key`)"

# Canonical dests the program owns -> (the config key that sets it, why). Every flag the program
# generates (fleet/vllm_command.py) is here; a test derives them from its command lines.
MANAGED: dict[str, tuple[str, str]] = {
    "model": ("hf_id", "the program passes the model as the first argument"),
    "served_model_name": ("served_model_name", "the load balancer routes by this name"),
    "revision": ("revision", "the program pins the model revision"),
    "tensor_parallel_size": ("tensor_parallel_size", "the program gives each replica its GPUs from it"),
    "pipeline_parallel_size": ("pipeline_parallel_size", "the program places pipeline stages on hosts from it"),
    "gpu_memory_utilization": ("gpu_memory_utilization", "the capacity planner sizes the KV cache from it"),
    "dtype": ("dtype", "placement checks the GPUs' generation against it"),
    "quantization": ("quantization", "placement and the capacity planner read it"),
    "kv_cache_dtype": ("kv_cache_dtype", "the capacity planner sizes the KV cache from it"),
    "max_model_len": ("max_model_len", "the capacity planner and the load balancer read it"),
    "max_num_seqs": ("max_num_seqs", "the capacity planner reads it"),
    "max_num_batched_tokens": ("max_num_batched_tokens", "the capacity planner reads it"),
    "enable_prefix_caching": ("enable_prefix_caching", "the program sets it from the config"),
    "trust_remote_code": ("trust_remote_code", "the program sets it from the config"),
    "speculative_config": ("speculative", "the program builds --speculative-config from it"),
    "spec_method": ("speculative", "vLLM merges it into --speculative-config, which the program sets"),
    "spec_model": ("speculative", "vLLM merges it into --speculative-config, which the program sets"),
    "spec_tokens": ("speculative", "vLLM merges it into --speculative-config, which the program sets"),
    "override_generation_config": ("sampling", "the program builds --override-generation-config from it"),
    "enable_lora": ("lora", "the program enables LoRA for the models with adapters"),
    "lora_modules": ("lora", "the load balancer routes each adapter's name to its model's replicas"),
    "max_loras": ("lora", "the capacity planner reserves GPU memory for each adapter slot"),
    "max_lora_rank": ("lora", "the capacity planner reserves GPU memory for each adapter slot"),
    "max_cpu_loras": ("lora", "the program sets it from `lora.max_cpu_loras`"),
    "shutdown_timeout": ("drain_timeout_s", "the program sizes the container's stop grace period from it"),
    "host": ("load_balancer", "the program binds the API where the load balancer and health checks reach it"),
    "port": ("load_balancer", "the program assigns each replica's port"),
    "uds": ("load_balancer", "the load balancer and health checks reach replicas over TCP"),
    "ssl_keyfile": ("load_balancer", "the load balancer and health checks speak plain HTTP to replicas"),
    "ssl_certfile": ("load_balancer", "the load balancer and health checks speak plain HTTP to replicas"),
    "nnodes": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "node_rank": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "master_addr": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "master_port": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "headless": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "distributed_executor_backend": ("pipeline_parallel_size", "the program launches the machines of a multi-host replica"),
    "device_ids": ("tensor_parallel_size", "the program assigns each replica its GPUs (hosts[].gpus)"),
    "download_dir": ("hf_cache_dir", "the replicas share the mounted Hugging Face cache "
                                     "(hosts[].hf_cache_dir, kubernetes.hf_cache)"),
    "api_key": ("api_key", "the program passes the API key as a secret (VLLM_API_KEY)"),
    "hf_token": ("hf_token", "the program passes the Hugging Face token as a secret (HF_TOKEN)"),
    "config": ("extra_args", "a YAML file inside the image could override any managed flag unseen"),
    "help": ("extra_args", "vLLM would print its help and exit"),
}
# vLLM's data parallelism is the fleet's `replicas`: independent servers behind the load balancer.
DATA_PARALLEL = ("data_parallel_", "replicas", "the fleet's replicas are its data parallelism; "
                 "a data-parallel rank needs GPUs the replica's container does not own")
SECRET_KEYS_FIX = {"api_key": "`pulumi config set --secret api_key`", "hf_token": "`pulumi config set --secret hf_token`"}

# ParallelConfig.__post_init__: world_size = pipeline x tensor x prefill-context parallel size.
# The fleet gives a replica tensor x pipeline GPUs: any other factor needs GPUs it does not own.
WORLD_SIZE_FACTORS = ("prefill_context_parallel_size",)
# Platform checks of the pinned vLLM: (dest, parsed value) -> platforms that accept it.
# Platform.is_sleep_mode_available (CUDA, ROCm, XPU); EngineArgs.create_engine_config refuses
# --kda-prefill-backend flashkda off CUDA and fused off ROCm. The fleet's GPUs are NVIDIA (CUDA).
PLATFORM_ONLY: dict[tuple[str, Any], tuple[str, ...]] = {
    ("enable_sleep_mode", True): ("cuda", "rocm", "xpu"),
    ("kda_prefill_backend", "flashkda"): ("cuda",),
    ("kda_prefill_backend", "fused"): ("rocm",),
}


@dataclass(frozen=True)
class Option:
    dest: str
    flags: tuple[str, ...]
    nargs: Any  # 0 (no value), None (one), "?", "+", "*" or a count
    kind: Optional[str]
    optional: bool
    choices: Optional[tuple[Any, ...]]
    keys: Optional[tuple[str, ...]] = None  # a JSON object's allowed top-level keys

    @property
    def name(self) -> str:
        """The spelling named after the dest (vLLM's main one), else the first long flag."""
        own = "--" + self.dest.replace("_", "-")
        return own if own in self.flags else self.flags[0]


@dataclass(frozen=True)
class Table:
    options: dict[str, Option]  # every spelling -> its option
    by_dest: dict[str, Option]
    env: frozenset[str]  # VLLM_* variables the pinned vLLM reads
    allow_abbrev: bool


@functools.lru_cache(maxsize=None)
def table() -> Table:
    doc = json.loads(SNAPSHOT.read_text())
    options: dict[str, Option] = {}
    by_dest: dict[str, Option] = {}
    for o in doc["options"]:
        opt = Option(o["dest"], tuple(o["flags"]), o["nargs"], o["kind"], o["optional"],
                     tuple(o["choices"]) if o["choices"] is not None else None,
                     tuple(o["keys"]) if o["keys"] is not None else None)
        by_dest[opt.dest] = opt
        options.update({f: opt for f in opt.flags})
    return Table(options, by_dest, frozenset(doc["env"]), doc["allow_abbrev"])


@dataclass
class Flag:
    """One option as vLLM will see it: where it starts in extra_args, how it was spelled, its values."""
    index: int
    spelled: str
    option: Option
    values: list[str] = field(default_factory=list)
    one_item: bool = False  # the flag and its value(s) share one list item (vLLM refuses that)
    dotted: bool = False    # `--json-flag.key value`: a key of a JSON option

    @property
    def text(self) -> str:
        return self.spelled if "=" in self.spelled else " ".join([self.spelled, *self.values])


class ArgError(Exception):
    def __init__(self, index: int, problem: str, allowed: str, fix: str, shown: Optional[str] = None) -> None:
        super().__init__(problem)
        self.index, self.problem, self.allowed, self.fix = index, problem, allowed, fix
        self.shown = shown  # the flag with its values, when more than the item at `index` matters


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's: a value, not an option


def _is_option(item: str) -> bool:
    return item.startswith("-") and len(item) > 1 and not _NEGATIVE_NUMBER.match(item)


def _canonical(item: str) -> tuple[str, Optional[str]]:
    """FlexibleArgumentParser's spelling rules: `--a_b=v` -> (`--a-b`, `v`); `-O3` -> optimization level."""
    if item.startswith("--"):
        name, eq, value = item.partition("=")
        head, dot, rest = name[2:].partition(".")
        return "--" + head.replace("_", "-") + dot + rest, value if eq else None
    if item.startswith("-O") and item != "-O":
        return "--optimization-level", item[3:] if item[2:3] == "=" else item[2:]
    name, eq, value = item.partition("=")
    return name, value if eq else None


def _lookup(name: str, index: int) -> Option:
    t = table()
    if name in t.options:
        return t.options[name]
    if name.startswith("--") and t.allow_abbrev:
        # argparse accepts a unique prefix of a long option (`--max-model` is `--max-model-len`).
        matches = sorted(f for f in t.options if f.startswith(name) and f.startswith("--"))
        if len(matches) == 1:
            return t.options[matches[0]]
        if len(matches) > 1:
            raise ArgError(index, f"`{name}` is ambiguous: it abbreviates {', '.join(matches[:6])}",
                           "a full vLLM flag", "spell the flag out")
    close = difflib.get_close_matches(name, list(t.options), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else "no similar flag"
    raise ArgError(index, f"`{name}` is not a flag of `vllm serve` in vLLM {VLLM_VERSION} ({hint})",
                   f"the flags of `vllm serve --help=all` for vLLM {VLLM_VERSION}",
                   f"fix the spelling{f' ({close[0]})' if close else ''} or remove it")


def parse(args: list[str]) -> list[Flag]:
    """The options of `args` with their values, as vLLM's parser groups them; raises ArgError."""
    items: list[tuple[int, str, bool]] = []  # (list index, item, came from a multi-word item)
    for j, arg in enumerate(args):
        words = arg.split()
        if _is_option(arg.strip()) and len(words) > 1:
            try:
                words = shlex.split(arg)
            except ValueError:
                pass
            items += [(j, w, True) for w in words]
        else:
            items.append((j, arg, False))
    flags: list[Flag] = []
    k = 0
    while k < len(items):
        j, item, joined = items[k]
        k += 1
        if not _is_option(item):
            raise ArgError(j, f"`{item}` is a value with no flag before it (vLLM refuses unrecognized arguments)",
                           "flags, each followed by its value(s)", "add the flag it belongs to, or remove it")
        if item == "-O" and k < len(items) and items[k][1] in ("0", "1", "2", "3"):
            item = "--optimization-level"
        name, explicit = _canonical(item)
        base, dot, _ = name.partition(".") if name.startswith("--") else (name, "", "")
        opt = _lookup(base, j)
        flag = Flag(j, item, opt, one_item=joined, dotted=bool(dot))
        flags.append(flag)
        if dot:  # --json-flag.key value: vLLM merges the keys into one JSON value of that option
            if explicit is None:
                if k >= len(items):
                    raise ArgError(j, f"`{item}` needs a value", "`--flag.key value`", "add the value")
                explicit = items[k][1]
                k += 1
            flag.values.append(explicit)
            continue
        nargs = opt.nargs
        if explicit is not None:
            if nargs == 0:
                raise ArgError(j, f"`{base}` takes no value (vLLM: ignored explicit argument)",
                               f"`{opt.name}`" + (f" or `{opt.flags[1]}`" if len(opt.flags) > 1 and opt.flags[1].startswith("--no-") else ""),
                               f"write `{opt.name}` alone, or its `--no-` form to turn it off")
            flag.values.append(explicit)
            continue
        want = {None: (1, 1), "?": (0, 1), "+": (1, None), "*": (0, None), 0: (0, 0)}.get(nargs, (nargs, nargs))
        while (want[1] is None or len(flag.values) < want[1]) and k < len(items) and not _is_option(items[k][1]):
            flag.values.append(items[k][1])
            flag.one_item = flag.one_item or items[k][2]
            k += 1
        if len(flag.values) < want[0]:
            raise ArgError(j, f"`{base}` expects {'a value' if want[0] == 1 else f'{want[0]} values'}",
                           f"`{opt.name} VALUE`" + (f" ({_allowed(opt)})" if opt.choices else ""),
                           "add the value as the next list item")
    return flags


def _allowed(opt: Option) -> str:
    if opt.choices:
        return "one of " + ", ".join(str(c) for c in opt.choices)
    if opt.keys is not None:
        return "a JSON object with keys among " + ", ".join(opt.keys[:12]) + (", ..." if len(opt.keys) > 12 else "")
    return {"int": "an integer", "float": "a number", "json": "JSON", "json-object": "a JSON object",
            "json-object-or-str": "a JSON object or a string", "human-int": "an integer such as 4096, 4k or 4K",
            "human-int-or-auto": "an integer such as 4096, 4k or 4K, or auto"}.get(opt.kind or "", "a string")


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")
_HUMAN_IN_JSON = re.compile(r"\b\d+(?:\.\d+)?[kKmMgGtT]\b")


def _human_int(v: str) -> int:
    """vLLM's human_readable_int: 4096, 4k (x1000), 4K (x1024, no decimals)."""
    m = _HUMAN_INT.fullmatch(v.strip())
    if not m:
        return int(v)
    number, suffix = m.groups()
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
    return int(number) * 1024 ** ("KMGT".index(suffix) + 1)


def _json_object(v: str) -> Any:
    parts = re.split(r'("(?:[^"\\]|\\.)*")', v)  # vLLM expands 80g-style numbers outside strings
    value = json.loads("".join(p if i % 2 else _HUMAN_IN_JSON.sub(lambda m: str(_human_int(m.group())), p)
                               for i, p in enumerate(parts)))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


CONVERT: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "json": json.loads,
    "json-object": _json_object,
    "json-object-or-str": lambda v: json.loads(v) if re.match(r"(?s)^\s*{.*}\s*$", v) else v,
    "human-int": _human_int,
    "human-int-or-auto": lambda v: -1 if v.strip() in ("-1",) or v.strip().lower() == "auto" else _human_int(v),
    "str-lower-snake": lambda v: v.lower().replace("-", "_"),
    "csv-int-or-str": lambda v: [int(p) if p.isdigit() else p for p in (s.strip() for s in v.split(","))],
}


def convert(opt: Option, value: str) -> Any:
    """The value as vLLM's parser would store it; ValueError when vLLM would refuse it."""
    if opt.optional and value in ("", "None"):
        return None
    out = CONVERT[opt.kind or "str"](value)
    if opt.choices is not None and out not in opt.choices:
        raise ValueError("not one of the choices")
    if opt.keys is not None and isinstance(out, dict) and set(out) - set(opt.keys):
        raise ValueError(f"unknown keys {sorted(set(out) - set(opt.keys))}")
    return out


def parsed_values(flags: list[Flag]) -> dict[str, Any]:
    """dest -> the value vLLM ends up with (the last spelling wins, as in argparse)."""
    out: dict[str, Any] = {}
    for f in flags:
        opt = f.option
        if f.dotted:
            continue
        if opt.nargs == 0:
            out[opt.dest] = not f.spelled.startswith("--no-")
        elif opt.nargs == "?" and not f.values:
            out[opt.dest] = True
        elif opt.nargs in (None, "?"):
            out[opt.dest] = convert(opt, f.values[0])
        else:
            out[opt.dest] = [convert(opt, v) for v in f.values]
    return out


# --- the checks ----------------------------------------------------------------------------------

def _managed(dest: str) -> Optional[tuple[str, str]]:
    if dest in MANAGED:
        return MANAGED[dest]
    if dest.startswith(DATA_PARALLEL[0]):
        return DATA_PARALLEL[1:]
    return None


def _fix_for(key: str, i: int) -> str:
    if key in SECRET_KEYS_FIX:
        return f"remove the flag; set the secret with {SECRET_KEYS_FIX[key]}"
    if key == "extra_args":
        return "remove the flag"
    if key in ("load_balancer", "hf_cache_dir"):
        return f"remove the flag (the `{key}` settings decide this)"
    return f"remove the flag and set `models[{i}].{key}`"


def _platform(model: Model) -> str:
    return "cpu" if model.device == "cpu" else "cuda"


def _gpus(model: Model) -> int:
    return model.tensor_parallel_size * model.pipeline_parallel_size if model.device == "gpu" else 0


def _combinations(model: Model, values: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(dest, problem, allowed, fix) for each startup refusal of vLLM the config already decides.

    Sources (vLLM 0.32.0): ParallelConfig validation (tp % dcp, elastic EP), SchedulerConfig.
    verify_max_model_len (chunked prefill, active sequences, long-prefill threshold)."""
    out = []
    tp = model.tensor_parallel_size if model.device == "gpu" else 1
    dcp = values.get("decode_context_parallel_size")
    if isinstance(dcp, int) and dcp > 0 and tp % dcp:
        out.append(("decode_context_parallel_size", f"vLLM refuses a decode context parallel size ({dcp}) that does "
                    f"not divide tensor_parallel_size ({tp})", f"a divisor of {tp}",
                    "lower it to a divisor of tensor_parallel_size, or remove it"))
    if values.get("enable_elastic_ep"):
        if not values.get("enable_eplb"):
            out.append(("enable_elastic_ep", "vLLM refuses elastic expert parallelism without EPLB",
                        "--enable-elastic-ep together with --enable-eplb", "add `--enable-eplb` or remove it"))
        elif model.pipeline_parallel_size > 1:
            out.append(("enable_elastic_ep", f"vLLM refuses elastic expert parallelism with pipeline parallelism "
                        f"(pipeline_parallel_size {model.pipeline_parallel_size})",
                        "pipeline_parallel_size 1 with --enable-elastic-ep", "remove it or set pipeline_parallel_size: 1"))
    if (values.get("enable_chunked_prefill") is False and model.max_num_batched_tokens and model.max_model_len
            and model.max_num_batched_tokens < model.max_model_len):
        out.append(("enable_chunked_prefill", f"without chunked prefill vLLM refuses max_num_batched_tokens "
                    f"({model.max_num_batched_tokens}) below max_model_len ({model.max_model_len})",
                    "chunked prefill, or max_num_batched_tokens >= max_model_len",
                    "remove it or raise max_num_batched_tokens"))
    active = values.get("max_num_active_seqs")
    if isinstance(active, int) and model.max_num_seqs and active > model.max_num_seqs:
        out.append(("max_num_active_seqs", f"vLLM refuses max_num_active_seqs ({active}) above max_num_seqs "
                    f"({model.max_num_seqs})", f"at most {model.max_num_seqs}", "lower it or raise max_num_seqs"))
    threshold = values.get("long_prefill_token_threshold")
    if isinstance(threshold, int) and model.max_model_len and threshold > model.max_model_len:
        out.append(("long_prefill_token_threshold", f"vLLM refuses a long-prefill threshold ({threshold}) above "
                    f"max_model_len ({model.max_model_len})", f"at most {model.max_model_len}",
                    "lower it or raise max_model_len"))
    return out


def _check(model: Model, i: int, args: list[str]) -> None:
    for j, arg in enumerate(args):
        if looks_secret(arg):
            raise ArgError(j, "this argument carries a credential in plain text (it would land in the rendered "
                           "command line and the Pulumi state)", "no credentials in extra_args", SECRET_FIX)
    flags = parse(args)
    for f in flags:  # the managed check comes first: whatever the spelling, the config key is the fix
        owned = _managed(f.option.dest)
        if owned:
            key, why = owned
            written = f.spelled.split("=")[0]
            spelled = f" (spelled `{written}`)" if written not in f.option.flags else ""
            raise ArgError(f.index, f"`{f.option.name}`{spelled} is set from the stack config: {why}",
                           "flags the program does not manage", _fix_for(key, i))
    for f in flags:
        if f.one_item:
            raise ArgError(f.index, f"`{f.option.name}` and its value share one list item: vLLM receives it as one "
                           "argument and refuses it", "one flag or one value per list item",
                           f"split it: [{', '.join(repr(w) for w in [f.spelled, *f.values])}]")
        for v in f.values if not f.dotted else []:
            try:
                convert(f.option, v)
            except (ValueError, TypeError, ArithmeticError):
                raise ArgError(f.index, f"`{f.option.name}` does not accept `{v}`", _allowed(f.option),
                               f"give `{f.option.name}` {_allowed(f.option)}", f.text) from None
        if f.dotted:
            kind = f.option.kind or ""
            if not kind.startswith("json"):
                raise ArgError(f.index, f"`{f.option.name}` is not a JSON option: `{f.spelled}` has no meaning",
                               "`--flag.key value` for JSON options only", f"write `{f.option.name} VALUE`")
            key = _canonical(f.spelled)[0].split(".")[1].rstrip("+")
            if f.option.keys is not None and key not in f.option.keys:
                close = difflib.get_close_matches(key, f.option.keys, n=1)
                raise ArgError(f.index, f"`{f.option.name}` has no key `{key}`"
                               + (f" (did you mean `{close[0]}`?)" if close else ""), _allowed(f.option),
                               "fix the key or remove it", f.text)
    values = parsed_values(flags)
    index = {f.option.dest: f.index for f in flags}
    text = {f.option.dest: f.text for f in flags}
    gpus = _gpus(model)
    for dest in WORLD_SIZE_FACTORS:
        factor = values.get(dest)
        if isinstance(factor, int) and factor > 1:
            raise ArgError(index[dest], f"vLLM would start {factor} x {max(gpus, 1)} workers, each with its own GPU; "
                           f"the replica's container owns {gpus} GPU{'s' if gpus != 1 else ''}",
                           f"`{table().by_dest[dest].name}` 1", "remove it; size replicas with tensor_parallel_size "
                           "and pipeline_parallel_size, and scale with replicas", text[dest])
    platform = _platform(model)
    for (dest, value), platforms in PLATFORM_ONLY.items():
        if values.get(dest) == value and platform not in platforms:
            where = "a CPU replica" if platform == "cpu" else "NVIDIA GPUs (CUDA)"
            raise ArgError(index[dest], f"vLLM {VLLM_VERSION} supports `{table().by_dest[dest].name}` "
                           f"{'' if value is True else value + ' '}only on {', '.join(platforms)}, not on {where}",
                           f"flags of the {platform} platform", "remove it" +
                           (f" or set `models[{i}].device: gpu`" if platform == "cpu" and "cuda" in platforms else ""),
                           text[dest])
    for dest, problem, allowed, fix in _combinations(model, values):
        raise ArgError(index[dest], problem, allowed, fix, text[dest])


def check_extra_args(model: Model, i: int) -> None:
    """Refuse the first extra argument of `models[i]` vLLM would refuse or the program owns."""
    try:
        _check(model, i, list(model.extra_args))
    except ArgError as e:
        raw = e.shown or model.extra_args[e.index]
        value = SHOWN if looks_secret(raw) else redact(raw)
        raise ConfigError(f"models[{i}].extra_args[{e.index}]", value, redact(e.problem), redact(e.allowed),
                          redact(e.fix)) from None
