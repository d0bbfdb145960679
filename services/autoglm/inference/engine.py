"""AutoGLMEngine: load a causal LM with ``from_pretrained`` and generate from it.

Plain Python with no transport code, so it is used the same way from the Dapr app, from
benchmarks and from tests. Requests are validated against the model's context window
before any tensor is built.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoglm.core.errors import InvalidRequestError, NotFoundError
from autoglm.core.schemas import GenerateRequest, GenerateResult

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
    loaded_at: float = field(default_factory=time.time)


class AutoGLMEngine:
    """Serves one or more Hugging Face causal LMs.

    ``model`` is a directory produced by ``save_pretrained`` (a real GLM-4 checkpoint or the
    demo model); ``model_id`` is the name clients use for it.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        model_id: str | None = None,
        dtype: str = "float32",
        max_context_length: int = 8192,
        num_threads: int | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise InvalidRequestError(f"dtype must be one of {sorted(DTYPES)}", param="dtype")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.dtype = DTYPES[dtype]
        self.max_context_length = max_context_length
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
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
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        model.eval()
        eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
        eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
        max_ctx = min(
            int(getattr(model.config, "max_position_embeddings", self.max_context_length)),
            self.max_context_length,
        )
        loaded = LoadedModel(model_id, path, model, tokenizer, max_ctx, eos_ids)
        self._models[model_id] = loaded
        log.info(
            "model loaded",
            extra={
                "model": model_id,
                "seconds": round(time.monotonic() - started, 2),
                "architecture": type(model).__name__,
                "max_context": max_ctx,
            },
        )
        return loaded

    def get(self, model_id: str | None) -> LoadedModel:
        key = model_id or self.default_model
        try:
            return self._models[key]
        except KeyError:
            raise NotFoundError(f"model {key!r} is not served here", param="model") from None

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "id": m.model_id,
                "max_context": m.max_context,
                "created": int(m.loaded_at),
                "ready": True,
            }
            for m in self._models.values()
        ]

    def health(self) -> dict[str, Any]:
        return {"ready": bool(self._models), "models": sorted(self._models)}

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
        budget = loaded.max_context - request.sampling.max_tokens
        if len(ids) > budget:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens and max_tokens is {request.sampling.max_tokens}; "
                f"together they exceed the model's context of {loaded.max_context} tokens",
                param="messages" if request.messages is not None else "prompt",
                code="context_length_exceeded",
            )
        return ids

    def generate(self, request: GenerateRequest) -> GenerateResult:
        loaded = self.get(request.model)
        prompt_ids = self.encode(loaded, request)
        params = request.sampling
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": not params.greedy,
            "eos_token_id": loaded.eos_token_ids,
            "pad_token_id": loaded.tokenizer.pad_token_id,
        }
        if not params.greedy:
            gen_kwargs.update(
                temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None
            )
        input_ids = torch.tensor([prompt_ids])
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            output = loaded.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **gen_kwargs
            )
        new_ids = output[0, len(prompt_ids) :].tolist()
        hit_eos = bool(new_ids) and new_ids[-1] in loaded.eos_token_ids
        if hit_eos:
            new_ids = new_ids[:-1]
        text = loaded.tokenizer.decode(new_ids, skip_special_tokens=True)
        finish = "stop" if hit_eos else "length"
        for stop in params.stop:
            cut = text.find(stop)
            if cut != -1:
                text, finish = text[:cut], "stop"
        return GenerateResult(
            request_id=request.request_id,
            model=loaded.model_id,
            text=text,
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(new_ids) + (1 if hit_eos else 0),
        )
