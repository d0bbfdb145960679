"""Adapters per family, embeddings, and the model registry's loading rules."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from autoglm.core.errors import (
    ConflictError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)
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
from tests.support.polling import wait_for

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
    def __init__(self, nbytes: int, busy: bool = False) -> None:
        self.nbytes = nbytes
        self.busy = busy
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


def _states(reg: ModelRegistry) -> dict[str, str]:
    return {m["id"]: m["state"] for m in reg.status()}


def test_eviction_makes_room_before_loading_and_refuses_what_cannot_fit() -> None:
    sizes = {"p": 40, "a": 40, "b": 40, "huge": 90}
    in_use_at_load: dict[str, int] = {}
    reg: ModelRegistry

    def loader(spec: ModelSpec) -> _Fake:
        in_use_at_load[spec.id] = reg.loaded_bytes()
        return _Fake(sizes[spec.id])

    reg = ModelRegistry(
        [ModelSpec("p", Path("p"), priority=True)]
        + [ModelSpec(m, Path(m)) for m in ("a", "b", "huge")],
        loader,
        memory_budget_bytes=100,
        estimate=lambda spec: sizes[spec.id],
    )
    reg.load("p")
    a = reg.get("a")
    reg.load("b")
    # ``a`` was closed before ``b``'s weights were read: never more than the budget.
    assert a.closed and in_use_at_load["b"] == 40
    assert _states(reg) == {"p": "ready", "a": "not_loaded", "b": "ready", "huge": "not_loaded"}
    # 90 cannot fit beside the priority model: refused up front, and b is not evicted in vain.
    with pytest.raises(OverloadedError) as err:
        reg.get("huge", wait_s=5)
    assert err.value.code == "memory_budget_exceeded" and err.value.status == 503
    assert "'huge' needs about" in err.value.message
    assert err.value.details["required_bytes"] == 90
    assert err.value.details["budget_bytes"] == 100
    assert "huge" not in in_use_at_load and _states(reg)["b"] == "ready"


def test_busy_models_are_not_evicted() -> None:
    made: dict[str, _Fake] = {}
    reg = ModelRegistry(
        [ModelSpec(m, Path(m)) for m in ("busy", "idle", "new", "next")],
        lambda spec: made.setdefault(spec.id, _Fake(40, busy=spec.id == "busy")),
        memory_budget_bytes=100,
        estimate=lambda _spec: 40,
    )
    reg.load("busy")  # least recently used, but serving requests
    time.sleep(0.01)
    reg.load("idle")
    reg.load("new")  # the idle one goes, not the busy one
    assert made["idle"].closed and not made["busy"].closed
    made["new"].busy = True
    # Now only busy models could make room: the load is refused instead.
    with pytest.raises(OverloadedError, match="only 0 MiB can be evicted") as err:
        reg.load("next")
    assert err.value.code == "memory_budget_exceeded"
    assert err.value.details["evictable_bytes"] == 0
    assert not made["busy"].closed and not made["new"].closed
    assert _states(reg) == {
        "busy": "ready",
        "idle": "not_loaded",
        "new": "ready",
        "next": "not_loaded",
    }


def test_unload_during_loading_sticks() -> None:
    gate = threading.Event()
    made: list[_Fake] = []

    def loader(spec: ModelSpec) -> _Fake:
        gate.wait(5)
        made.append(_Fake(10))
        return made[-1]

    reg = ModelRegistry([ModelSpec("m", Path("m"))], loader, 100, estimate=lambda _s: 10)
    with pytest.raises(UnavailableError, match="still loading"):
        reg.get("m", wait_s=0.01)
    waiter_error: list[Exception] = []

    def wait_for_it() -> None:
        try:
            reg.get("m", wait_s=5)
        except UnavailableError as exc:
            waiter_error.append(exc)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    reg.unload("m")
    waiter.join(5)
    assert [getattr(e, "code", None) for e in waiter_error] == ["model_unloaded"]
    assert reg.committed_bytes() == 0  # its reservation is released at once
    gate.set()
    # The finished load is discarded, not made ready.
    wait_for("the late load closed", lambda: made and made[0].closed, 5, every=0.01)
    assert _states(reg) == {"m": "not_loaded"} and reg.loaded_bytes() == 0


def test_priority_models_cannot_be_unloaded() -> None:
    made: list[_Fake] = []
    reg = ModelRegistry(
        [ModelSpec("p", Path("p"), priority=True)],
        lambda _spec: made.append(_Fake(10)) or made[-1],
        100,
    )
    reg.load("p")
    with pytest.raises(ConflictError, match="'p' is a priority model") as err:
        reg.unload("p")
    assert err.value.status == 409 and err.value.code == "priority_model"
    assert reg.priority_ready() and not made[0].closed
    reg.close()  # shutting down still closes it
    assert made[0].closed
