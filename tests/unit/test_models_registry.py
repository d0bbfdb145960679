"""Adapters per family, embeddings, and the model registry's loading rules."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from autoglm.core.errors import InvalidRequestError, UnavailableError
from autoglm.inference.adapters import (
    EmbeddingAdapter,
    GLMAdapter,
    GPT2Adapter,
    LlamaAdapter,
    ModelAdapter,
    adapter_for,
)
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.registry import ModelRegistry, ModelSpec
from autoglm.models.signing import IntegrityError, verify_model

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


class _NoTemplate:
    chat_template = None


@pytest.mark.parametrize(
    ("model_type", "cls"),
    [
        ("glm", GLMAdapter),
        ("glm4", GLMAdapter),
        ("llama", LlamaAdapter),
        ("gpt2", GPT2Adapter),
        ("bert", EmbeddingAdapter),
        ("whatever", ModelAdapter),
    ],
)
def test_adapter_by_model_type(model_type: str, cls: type[ModelAdapter]) -> None:
    assert type(adapter_for(model_type)) is cls


def test_family_chat_formats_without_a_template() -> None:
    tok = _NoTemplate()
    assert GLMAdapter().chat_prompt(tok, MSGS) == (
        "[gMASK]<sop><|system|>\nbe brief<|user|>\nhi<|assistant|>\n"
    )
    llama = LlamaAdapter().chat_prompt(tok, MSGS)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert GPT2Adapter().chat_prompt(tok, MSGS).endswith("User: hi\nAssistant:")


def test_glm_stop_tokens_include_end_of_turn(demo_model_dir: Path) -> None:
    engine = AutoGLMEngine(demo_model_dir, warmup=False)
    try:
        loaded = engine.get(None)
        vocab = loaded.tokenizer.get_vocab()
        assert {vocab["<|user|>"], vocab["<|observation|>"], vocab["<|endoftext|>"]} <= set(
            loaded.eos_token_ids
        )
    finally:
        engine.close()


def test_embeddings_are_normalised_and_semantic(models_dir: Path) -> None:
    engine = AutoGLMEngine(
        models=[ModelSpec("minilm", models_dir / "all-MiniLM-L6-v2", priority=True)]
    )
    try:
        vecs, tokens = engine.embed(
            ["A cat sits on the mat.", "A kitten is on the rug.", "Quarterly tax filing deadline"]
        )
        assert len(vecs) == 3 and len(vecs[0]) == 384 and tokens > 10
        dot = [sum(a * b for a, b in zip(vecs[0], v, strict=True)) for v in vecs]
        assert abs(dot[0] - 1.0) < 1e-4
        assert dot[1] > dot[2] + 0.2, "similar sentences must be closer"
        with pytest.raises(InvalidRequestError, match="does not serve generation"):
            engine.get("minilm")
    finally:
        engine.close()


def test_signed_models_verify_and_tampering_is_refused(
    models_dir: Path, signing_public_key: bytes, tmp_path: Path
) -> None:
    verify_model(models_dir / "demo-glm", signing_public_key)
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(models_dir / "demo-glm", copy)
    (copy / "generation_config.json").write_text("{}")
    with pytest.raises(UnavailableError, match=r"generation_config\.json.*digest"):
        AutoGLMEngine(copy, verify=lambda p: verify_model(p, signing_public_key))


class _Fake:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {}


def test_lazy_load_in_background_and_lru_eviction() -> None:
    gate = threading.Event()
    loads: list[str] = []

    def loader(spec: ModelSpec) -> _Fake:
        loads.append(spec.id)
        if spec.id == "slow":
            gate.wait(5)
        return _Fake(40)

    reg = ModelRegistry(
        [
            ModelSpec("p", Path("p"), priority=True),
            ModelSpec("a", Path("a")),
            ModelSpec("b", Path("b")),
            ModelSpec("slow", Path("slow")),
        ],
        loader,
        memory_budget_bytes=100,
    )
    reg.load("p")
    a = reg.get("a")
    time.sleep(0.01)
    reg.get("b")  # p(40) + a(40) + b(40) > 100: least recently used non-priority goes
    assert a.closed and {m["id"]: m["state"] for m in reg.status()}["a"] == "not_loaded"
    with pytest.raises(UnavailableError, match="still loading"):
        reg.get("slow", wait_s=0.05)
    gate.set()
    assert reg.get("slow", wait_s=5).nbytes == 40
    assert {m["id"]: m["state"] for m in reg.status()}["p"] == "ready"


def test_failed_load_is_reported_not_fatal() -> None:
    def loader(spec: ModelSpec) -> _Fake:
        raise IntegrityError("model 'x' is not signed")

    reg = ModelRegistry([ModelSpec("x", Path("x"))], loader, 100)
    with pytest.raises(UnavailableError, match="not signed"):
        reg.get("x", wait_s=5)
    assert reg.status()[0]["state"] == "failed"
