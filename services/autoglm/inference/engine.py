"""AutoGLMEngine: load causal LMs with ``from_pretrained`` and serve them with continuous
batching.

Plain Python with no transport code, so it is used the same way from the Dapr app, from
benchmarks and from tests. Requests are validated against the model's context window
before they reach the scheduler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoglm.core.errors import InvalidRequestError, NotFoundError
from autoglm.core.schemas import GenerateRequest, GenerateResult
from autoglm.inference.kvcache import PrefixCache
from autoglm.inference.scheduler import RequestHandle, Scheduler

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    model: Any
    tokenizer: Any
    max_context: int
    eos_token_ids: list[int]
    scheduler: Scheduler
    loaded_at: float = field(default_factory=time.time)


def resolve_device(device_map: str) -> torch.device:
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


class AutoGLMEngine:
    """Serves Hugging Face causal LMs from ``save_pretrained`` directories.

    ``model`` is a checkpoint directory (a real GLM-4 chat model or the demo model);
    ``model_id`` is the name clients use for it.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        model_id: str | None = None,
        device_map: str = "auto",
        dtype: str = "float32",
        max_context_length: int = 8192,
        max_batch_size: int = 32,
        max_queue: int = 256,
        prefix_cache_mb: int = 256,
        request_timeout_s: float = 300.0,
        num_threads: int | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise InvalidRequestError(f"dtype must be one of {sorted(DTYPES)}", param="dtype")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device_map)
        self.dtype = DTYPES[dtype]
        self.max_context_length = max_context_length
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefix_cache_bytes = prefix_cache_mb * 1024 * 1024
        self.request_timeout_s = request_timeout_s
        self._models: dict[str, LoadedModel] = {}
        path = Path(model)
        self.default_model = model_id or path.name
        self.load_model(self.default_model, path)

    # -- registry --------------------------------------------------------------------
    def load_model(self, model_id: str, path: Path) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (path / "config.json").is_file():
            raise NotFoundError(f"model directory {path.name!r} has no config.json", param="model")
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device)
        model.eval()
        eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
        eos_ids = [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
        max_ctx = min(
            int(getattr(model.config, "max_position_embeddings", self.max_context_length)),
            self.max_context_length,
        )
        scheduler = Scheduler(
            model, tokenizer, model_id, eos_ids,
            max_batch_size=self.max_batch_size,
            max_queue=self.max_queue,
            prefix_cache=PrefixCache(self.prefix_cache_bytes),
            request_timeout_s=self.request_timeout_s,
        )
        loaded = LoadedModel(model_id, path, model, tokenizer, max_ctx, eos_ids, scheduler)
        self._models[model_id] = loaded
        log.info(
            "model loaded",
            extra={"model": model_id, "seconds": round(time.monotonic() - started, 2),
                   "architecture": type(model).__name__, "max_context": max_ctx,
                   "device": str(self.device), "dtype": str(self.dtype)},
        )
        return loaded

    def unload_model(self, model_id: str) -> None:
        loaded = self._models.pop(model_id, None)
        if loaded is None:
            raise NotFoundError(f"model {model_id!r} is not loaded", param="model")
        loaded.scheduler.close()

    def close(self) -> None:
        for model_id in list(self._models):
            self.unload_model(model_id)

    def get(self, model_id: str | None) -> LoadedModel:
        key = model_id or self.default_model
        try:
            return self._models[key]
        except KeyError:
            raise NotFoundError(f"model {key!r} is not served here", param="model") from None

    def models(self) -> list[dict[str, Any]]:
        return [
            {"id": m.model_id, "max_context": m.max_context, "created": int(m.loaded_at),
             "ready": True}
            for m in self._models.values()
        ]

    def health(self) -> dict[str, Any]:
        return {
            "ready": bool(self._models),
            "models": {
                m.model_id: {"queue_depth": m.scheduler.queue_depth,
                             "batch_size": m.scheduler.batch_size}
                for m in self._models.values()
            },
        }

    # -- generation ------------------------------------------------------------------
    def encode(self, loaded: LoadedModel, request: GenerateRequest) -> list[int]:
        tok = loaded.tokenizer
        if request.messages is not None:
            text = tok.apply_chat_template(
                [m.model_dump() for m in request.messages],
                tokenize=False,
                add_generation_prompt=True,
            )
        else:
            text = request.prompt or ""
        ids: list[int] = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidRequestError("prompt is empty", param="prompt")
        budget = loaded.max_context - request.sampling.max_tokens
        if len(ids) > budget:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens and max_tokens is {request.sampling.max_tokens}; "
                f"together they exceed the model's context of {loaded.max_context} tokens",
                param="messages" if request.messages is not None else "prompt",
                code="context_length_exceeded",
            )
        return ids

    def submit(self, request: GenerateRequest) -> RequestHandle:
        """Queue ``request``; the handle gives the result, streamed text, or cancellation."""
        loaded = self.get(request.model)
        return loaded.scheduler.submit(request, self.encode(loaded, request))

    def generate(self, request: GenerateRequest, timeout: float | None = None) -> GenerateResult:
        return self.submit(request).result(timeout or self.request_timeout_s + 5)

    def stream(self, request: GenerateRequest) -> Iterator[str]:
        """Text deltas as they are decoded; closing the iterator cancels the request."""
        handle = self.submit(request)
        try:
            yield from handle
        finally:
            if not handle.done:
                handle.cancel()
