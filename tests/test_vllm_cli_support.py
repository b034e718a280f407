"""The vLLM-CLI test helper parses like `vllm serve` and rejects what it rejects.

Importing vLLM takes ~10 s; the parser is built once per process.
"""

import pytest

pytest.importorskip("vllm")

from support.vllm_cli import engine_args_from_serve_args, parse_serve_args  # noqa: E402

GOOD = [
    "Qwen/Qwen2.5-0.5B-Instruct",
    "--host", "0.0.0.0",
    "--port", "8000",
    "--tensor-parallel-size", "2",
    "--override-generation-config", '{"temperature": 0.6}',
    "--speculative-config", '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":4}',
    "--nnodes", "2",
    "--node-rank", "1",
    "--master-addr", "10.0.0.1",
    "--master-port", "29500",
    "--headless",
]


def test_good_argv_parses_to_typed_values():
    ns = parse_serve_args(GOOD)
    assert ns.subparser == "serve"
    assert ns.model_tag == ns.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert ns.host == "0.0.0.0"
    assert ns.port == 8000
    assert ns.tensor_parallel_size == 2
    assert ns.override_generation_config == {"temperature": 0.6}
    assert ns.speculative_config == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4,
    }
    assert (ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port) == (2, 1, "10.0.0.1", 29500)
    assert ns.headless is True


def test_engine_args_carry_the_values():
    ea = engine_args_from_serve_args(GOOD)
    assert ea.model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert ea.tensor_parallel_size == 2
    assert ea.nnodes == 2 and ea.node_rank == 1


def test_dotted_json_flags_and_underscores_are_accepted():
    ns = parse_serve_args(
        ["m", "--speculative-config.method", "ngram",
         "--speculative-config.num_speculative_tokens", "3",
         "--max_model_len", "1k", "--no-enable-prefix-caching"]
    )
    assert ns.speculative_config == {"method": "ngram", "num_speculative_tokens": 3}
    assert ns.max_model_len == 1000
    assert ns.enable_prefix_caching is False


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["m", "--tensor-paralel-size", "2"], "unrecognized arguments"),
        (["m", "--gpu-memory-utilization", "abc"], "invalid float value"),
        (["m", "--dtype", "float64"], "invalid choice"),
        (["m", "--speculative-config", "{not json"], "--speculative-config"),
        (["m", "--compilation-config", '{"no_such_key": 1}'], "no_such_key"),
        (["m", "--speculative-config", '{"methd": "ngram"}'], "methd"),
        (["m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": "x"}'],
         "num_speculative_tokens"),
        (["m", "--enable-auto-tool-choice"], "--tool-call-parser"),
    ],
)
def test_bad_argv_raises_value_error(argv, fragment):
    with pytest.raises(ValueError, match=None) as exc:
        parse_serve_args(argv)
    assert fragment in str(exc.value)


def test_parse_without_engine_args_skips_the_speculative_check():
    ns = parse_serve_args(["m", "--speculative-config", '{"methd": "ngram"}'], engine_args=False)
    assert ns.speculative_config == {"methd": "ngram"}


# --- the other live-test helpers (fast, no server) ---------------------------

def test_vllm_server_cmd_swaps_only_host_port_and_model(tmp_path):
    from support.vllm_server import vllm_server_cmd

    serve_args = ["/models/x", "--host", "0.0.0.0", "--port=8000", "--max-model-len", "512",
                  "--override-generation-config", '{"temperature": 0.6}']
    cmd = vllm_server_cmd(serve_args, host="127.0.0.1", port=4321, model=tmp_path)
    at = cmd.index("serve")
    assert cmd[1] == "-c" and "vllm.entrypoints.cli.main" in cmd[2]
    assert cmd[at + 1:] == [str(tmp_path), "--host", "127.0.0.1", "--port=4321", "--max-model-len",
                            "512", "--override-generation-config", '{"temperature": 0.6}']
    ns = parse_serve_args(cmd[at + 1:])
    assert (ns.model, ns.host, ns.port) == (str(tmp_path), "127.0.0.1", 4321)
    # missing host/port get appended
    assert vllm_server_cmd(["m"], host="h", port=1)[-5:] == ["m", "--host", "h", "--port", "1"]
    with pytest.raises(ValueError):
        vllm_server_cmd(["--port", "1"], host="h", port=2)


def test_tiny_model_is_deterministic_and_consistent(tmp_path):
    import json

    from tokenizers import Tokenizer

    from support.tiny_model import make_tiny_model

    a = make_tiny_model(tmp_path / "a")
    b = make_tiny_model(tmp_path / "b", max_position_embeddings=4096)
    names = sorted(p.name for p in a.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(names)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    cfg = json.loads((a / "config.json").read_text())
    tok = Tokenizer.from_file(str(a / "tokenizer.json"))
    assert cfg["vocab_size"] == tok.get_vocab_size()
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["head_dim"] == 64
    ids = tok.encode("Hello world, please write a story").ids
    assert len(ids) < 12 and tok.decode(ids) == "Hello world, please write a story"
    assert "chat_template" in json.loads((a / "tokenizer_config.json").read_text())


def test_stop_kills_the_whole_process_group(tmp_path):
    import os
    import sys
    import time

    from support.processes import free_port, running, start, stop, wait_http

    # A parent that ignores SIGTERM and a grandchild: stop() must still clear the group.
    script = ("import os, signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('up', flush=True); time.sleep(60)\n")
    log = tmp_path / "p.log"
    proc = start([sys.executable, "-c", script], env=dict(os.environ), log_path=log)
    assert os.getpgid(proc.pid) == proc.pid
    for _ in range(50):
        if "up" in log.read_text():
            break
        time.sleep(0.1)
    stop(proc, timeout=1)
    assert proc.returncode == -9
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    stop(proc)  # idempotent

    port = free_port()
    with pytest.raises(RuntimeError, match="exited with 3"):
        with running([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], dict(os.environ),
                     tmp_path / "q.log", f"http://127.0.0.1:{port}/health", 30):
            pass
    with pytest.raises(TimeoutError, match="boom2"):
        p = start([sys.executable, "-c", "print('boom2', flush=True); import time; time.sleep(30)"],
                  env=dict(os.environ), log_path=tmp_path / "r.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/", 1.5, proc=p, log_path=tmp_path / "r.log")
        finally:
            stop(p, timeout=2)
