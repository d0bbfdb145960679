from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoglm.core.errors import InvalidRequestError, NotFoundError
from autoglm.core.schemas import ChatMessage, GenerateRequest, SamplingParams
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.registry import ModelSpec


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> AutoGLMEngine:
    return AutoGLMEngine(demo_model_dir, model_id="demo-glm", max_context_length=256)


def _req(max_tokens: int = 8, **sampling: object) -> GenerateRequest:
    return GenerateRequest(
        messages=[ChatMessage(role="user", content="Hello, model")],
        sampling=SamplingParams(max_tokens=max_tokens, **sampling),  # type: ignore[arg-type]
    )


def test_chat_prompt_uses_glm_template(engine: AutoGLMEngine) -> None:
    loaded = engine.get(None)
    ids = engine.encode(loaded, _req())
    text = loaded.tokenizer.decode(ids)
    assert text.startswith("[gMASK]<sop><|user|>\nHello, model<|assistant|>")


def test_greedy_generation_is_deterministic_and_bounded(engine: AutoGLMEngine) -> None:
    a = engine.generate(_req(temperature=0.0))
    b = engine.generate(_req(temperature=0.0))
    assert a.text == b.text
    assert 1 <= a.completion_tokens <= 8
    assert a.finish_reason in ("stop", "length")
    assert a.prompt_tokens > 5 and a.model == "demo-glm"


def test_seeded_sampling_reproduces(engine: AutoGLMEngine) -> None:
    a = engine.generate(_req(max_tokens=12, temperature=1.0, seed=7))
    b = engine.generate(_req(max_tokens=12, temperature=1.0, seed=7))
    assert a.text == b.text


def test_prompt_over_context_is_refused_with_counts(engine: AutoGLMEngine) -> None:
    req = GenerateRequest(prompt="word " * 400, sampling=SamplingParams(max_tokens=16))
    with pytest.raises(InvalidRequestError) as err:
        engine.generate(req)
    assert err.value.code == "context_length_exceeded"
    assert "256" in err.value.message and "max_tokens is 16" in err.value.message


def test_unknown_model_is_404(engine: AutoGLMEngine) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        engine.generate(GenerateRequest(model="nope", prompt="x"))


def test_size_is_estimated_before_loading(engine: AutoGLMEngine) -> None:
    """The estimate (weight files on disk, scaled to the loading dtype, plus the KV pool)
    is what the registry makes room for before reading any weights, so it must match the
    real size."""
    loaded = engine.get(None)
    spec = ModelSpec("demo-glm", loaded.path)
    estimate = engine._estimate(spec)
    assert abs(estimate - loaded.nbytes) <= 0.05 * loaded.nbytes
    engine.dtype_name, engine.dtype = "bfloat16", torch.bfloat16
    try:
        kv = engine.kv_cache_bytes
        assert engine._estimate(spec) - kv == (estimate - kv) // 2
    finally:
        engine.dtype_name, engine.dtype = "float32", torch.float32
    assert engine._estimate(ModelSpec("gone", loaded.path / "missing")) == 0


def test_every_model_op_runs_on_the_engine_compute_thread(models_dir: Path) -> None:
    """Loading, steps and embeddings all run on one thread: a second thread running
    OpenMP ops would make libgomp stop spinning and halve small steps' speed."""
    import threading

    engine = AutoGLMEngine(
        models=[
            ModelSpec("demo-glm", models_dir / "demo-glm", priority=True),
            ModelSpec("minilm", models_dir / "all-MiniLM-L6-v2", priority=True),
        ]
    )
    try:
        seen: set[threading.Thread] = set()
        for model_id in ("demo-glm", "minilm"):
            # The embeddings: every forward runs them (a step's lean forward skips the
            # model's own ``forward``: kvcache.step_forward).
            model = engine.registry.get(model_id).model.get_input_embeddings()
            model.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread()))
        engine.generate(_req(max_tokens=4))
        engine.embed(["hello"], "minilm")
        assert seen and {t.name for t in seen} == {"autoglm-compute"}
        assert threading.current_thread() not in seen
        # A call from the compute thread itself runs at once (no deadlock).
        assert engine.compute.call(lambda: engine.compute.call(lambda: 7)) == 7
        with pytest.raises(ZeroDivisionError):
            engine.compute.call(lambda: 1 / 0)
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.compute.call(lambda: None)
