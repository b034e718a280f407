"""A tiny Qwen2-style model directory for serving with ``--load-format dummy``.

vLLM never reads weights with ``--load-format dummy`` (it fills them with small
random values), so a model directory only needs ``config.json``, a tokenizer and
``generation_config.json``. Generations are gibberish, but every endpoint
(completions, chat, streaming, ``/metrics``) behaves like a real model.

The tokenizer is a byte-level BPE trained on a built-in list of English words, so
any text tokenizes (unknown words fall back to bytes), common words are single
tokens and every generated id decodes to text. ``vocab_size`` in ``config.json``
equals the tokenizer size so the model can never sample an id the tokenizer lacks.

Shape: hidden 128, 2 layers, 2 attention heads, 1 KV head (head_dim 64; the CPU
attention kernel rejects head_dim 16), intermediate 256.

Everything is deterministic (same bytes on every call) and takes well under 2 s.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# ChatML, as Qwen2 instruct models use; also accepts OpenAI content-part lists.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Sampling defaults a real instruct model ships (Qwen2.5 uses these); lets tests
# observe that vLLM applies generation_config.json and that
# --override-generation-config overrides it.
GENERATION_DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}

_WORDS = """
the be to of and a in that have i it for not on with he as you do at this but his by
from they we say her she or an will my one all would there their what so up out if
about who get which go me when make can like time no just him know take people into
year your good some could them see other than then now look only come its over think
also back after use two how our work first well way even new want because any these
give day most us is are was were been has had did does said says made went gone got
hello world model server request response token tokens prompt reply answer question
chat message user assistant system test tests testing fleet replica replicas router
nginx load balance balancer health metrics metric latency throughput queue running
waiting cache prefix prefill decode batch batches stream streaming engine gpu cpu
memory core cores node nodes cluster deploy deployment config value values number
one two three four five six seven eight nine ten hundred thousand zero first second
third last next small large big little long short high low fast slow early late old
young right left true false yes ok okay please thank thanks sorry help tell write read
speak talk listen hear see watch run walk stop start begin end open close move stay
keep let put set try ask need feel become leave call find mean seem turn show play
live believe bring happen provide sit stand lose pay meet include continue learn change
lead understand follow create spend grow offer remember love consider appear buy wait
serve die send expect build fall cut reach kill remain suggest raise pass sell require
report decide pull house home room door window table chair book page word words story
city country state world place water food money car road street school student teacher
family friend child children man woman men women person life hand eye head face name
part group problem fact point case week month night morning evening today tomorrow
yesterday question idea information power war game business service area program
system computer data code file line text list table key color red blue green black
white light dark sun moon star sky sea river tree forest mountain cat dog bird fish
horse animal plant flower apple bread milk coffee tea sugar salt rain snow wind cold
hot warm cool happy sad angry calm quick quiet loud clean dirty easy hard simple
strong weak rich poor full empty free busy ready sure clear different same important
possible public private real best better great nice bad worse worst many much more
few less very really always never often sometimes here where why again still already
almost together away around between under above through during before until while
each every both either neither another such own same able across against along among
""".split()

# A few sentences so BPE also learns pieces that span common word pairs' spacing.
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "Please write a short story about a cat and a dog.",
    "What is the capital of the country?",
    "The server sends a response to every request.",
    "Tokens stream back to the user one by one.",
    "Count from one to ten: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
]


def _corpus() -> list[str]:
    # Deterministic order; each word with and without a leading space so the
    # byte-level BPE learns both "word" and " word".
    words = list(dict.fromkeys(_WORDS))
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words[:100]]
    return lines + _SENTENCES


def build_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train (deterministically) the byte-level BPE tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def make_tiny_model(directory: Path, *, max_position_embeddings: int = 4096) -> Path:
    """Write the tiny model into ``directory`` (created if needed); return it.

    Serve it with ``--load-format dummy`` (there are no weight files).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    tok.save(str(directory / "tokenizer.json"))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    pad_id = tok.token_to_id(PAD_TOKEN)
    eos_id = tok.token_to_id(EOS_TOKEN)

    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": 2,
        "use_sliding_window": False,
        "sliding_window": None,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
        "bos_token_id": pad_id,
        "eos_token_id": eos_id,
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_position_embeddings,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    special_tokens_map = {
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    generation_config = {
        "bos_token_id": pad_id,
        "eos_token_id": [eos_id, pad_id],
        "pad_token_id": pad_id,
        "do_sample": True,
        **GENERATION_DEFAULTS,
    }
    for name, payload in (
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_tokens_map),
        ("generation_config.json", generation_config),
    ):
        (directory / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return directory
