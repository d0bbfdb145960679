"""AutoGLMEngine: load models with ``from_pretrained`` and serve them — causal LMs with
continuous batching, sentence encoders for embeddings.

Plain Python with no transport code, so it is used the same way from the Dapr app, from
benchmarks and from tests. Requests are validated against the model's context window
before they reach a scheduler; weights are verified (when a verifier is given) before a
single byte of them is loaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import GenerateRequest, GenerateResult, SamplingParams
from autoglm.inference import outputs
from autoglm.inference.adapters import ModelAdapter, adapter_for, model_type_of
from autoglm.inference.allocator import keep_freed_memory
from autoglm.inference.constraints import GrammarCompiler
from autoglm.inference.embedder import Embedder
from autoglm.inference.kvcache import ATTN_IMPLEMENTATION, PagedKVCache, register_attention
from autoglm.inference.policy import PolicyConfig, TenantLimits
from autoglm.inference.registry import ModelRegistry, ModelSpec
from autoglm.inference.sampling import TokenText
from autoglm.inference.scheduler import ComputeThread, RequestHandle, Scheduler, StepStats

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.float32,
}


def resolve_device(device_map: str) -> torch.device:
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


@dataclass
class LoadedModel:
    """A model ready to serve: generative (``scheduler``) or embedding (``embedder``)."""

    model_id: str
    path: Path
    adapter: ModelAdapter
    tokenizer: Any
    max_context: int
    nbytes: int
    model: Any = None
    scheduler: Scheduler | None = None
    embedder: Embedder | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    loaded_at: float = field(default_factory=time.time)
    _grammar: GrammarCompiler | None = None
    _token_text: TokenText | None = None

    def grammar(self) -> GrammarCompiler:
        """The model's grammar compiler (built on first use: constrained decoding)."""
        if self._grammar is None:
            vocab = int(self.model.get_output_embeddings().weight.shape[0])
            eos = self.eos_token_ids[0] if self.eos_token_ids else self.tokenizer.eos_token_id
            self._grammar = GrammarCompiler(self.tokenizer, vocab, int(eos))
        return self._grammar

    @property
    def token_text(self) -> TokenText:
        if self._token_text is None:
            self._token_text = TokenText(self.tokenizer)
        return self._token_text

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def busy(self) -> bool:
        """Requests running or queued. Embedding calls run in their callers' threads and
        keep their own reference, so closing an encoder never fails one."""
        s = self.scheduler
        return s is not None and (s.batch_size > 0 or s.queue_depth > 0)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": self.kind,
            "family": self.adapter.family,
            "max_context": self.max_context,
            "created": int(self.loaded_at),
            "memory_mb": round(self.nbytes / 2**20, 1),
        }
        if self.scheduler is not None:
            info.update(
                queue_depth=self.scheduler.queue_depth, batch_size=self.scheduler.batch_size
            )
        if self.embedder is not None:
            info["dimensions"] = self.embedder.dimensions
        return info


class AutoGLMEngine:
    """Serves one or more Hugging Face models from ``save_pretrained`` directories.

    ``model`` is a checkpoint directory (a real GLM-4 chat model or the demo model) served
    as ``model_id``; more models go in ``models`` (``priority`` ones load at start).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        model_id: str | None = None,
        models: list[ModelSpec] | None = None,
        device_map: str = "auto",
        dtype: str = "float32",
        max_context_length: int = 8192,
        max_batch_size: int = 32,
        max_queue: int = 256,
        prefix_cache_mb: int = 256,
        kv_cache_mb: int = 512,
        kv_cache_gpu_fraction: float = 0.5,
        kv_block_size: int = 16,
        max_step_tokens: int = 2048,
        interleaved_prefill_tokens: int = 48,
        prefill_tpot_factor: float = 3.0,
        prefill_step_floor_ms: float = 80.0,
        tenant_limits: TenantLimits | None = None,
        tenant_overrides: dict[str, TenantLimits] | None = None,
        request_timeout_s: float = 300.0,
        memory_budget_mb: int = 16384,
        gpu_memory_fraction: float | None = None,
        num_threads: int | None = None,
        malloc_keep_mb: int = 256,
        verify: Callable[[Path], None] | None = None,
        warmup: bool = True,
        on_step: Callable[[str, StepStats], None] | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise InvalidRequestError(f"dtype must be one of {sorted(DTYPES)}", param="dtype")
        self.device = resolve_device(device_map)
        if gpu_memory_fraction is not None and self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, self.device)
        if dtype == "int8" and self.device.type != "cpu":
            raise InvalidRequestError(
                "dtype int8 uses dynamic quantization, which runs on CPU; use float16 or "
                "bfloat16 on CUDA",
                param="dtype",
            )
        if self.device.type == "cpu":
            # Activations of prompt steps are reused, not faulted in anew (allocator.py).
            keep_freed_memory(malloc_keep_mb)
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.max_context_length = max_context_length
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefix_cache_bytes = prefix_cache_mb * 1024 * 1024
        self.kv_cache_bytes = kv_cache_mb * 1024 * 1024
        self.kv_cache_gpu_fraction = kv_cache_gpu_fraction
        self.kv_block_size = kv_block_size
        self.policy = PolicyConfig(
            max_batch_size=max_batch_size,
            max_step_tokens=max_step_tokens,
            interleaved_prefill_tokens=interleaved_prefill_tokens,
            prefill_tpot_factor=prefill_tpot_factor,
            prefill_step_floor_s=prefill_step_floor_ms / 1000,
            default_limits=tenant_limits or TenantLimits(),
            tenant_limits=dict(tenant_overrides or {}),
        )
        self.request_timeout_s = request_timeout_s
        self.verify = verify
        self.warmup = warmup
        self.on_step = on_step
        specs = list(models or [])
        if model is not None:
            path = Path(model)
            specs.insert(0, ModelSpec(model_id or path.name, path, priority=True))
        if not specs:
            raise InvalidRequestError("no model configured", param="model")
        self.default_model = specs[0].id
        #: Requests for embeddings that name no model go to the first encoder configured.
        self.default_embedding_model = next(
            (
                s.id
                for s in specs
                if (s.path / "config.json").is_file()
                and adapter_for(model_type_of(s.path)).kind == "embed"
            ),
            None,
        )
        #: Every model op of this engine runs on this one thread (see ComputeThread).
        self.compute = ComputeThread(num_threads=num_threads)
        self.registry = ModelRegistry(
            specs, self._load, memory_budget_mb * 1024 * 1024, estimate=self._estimate
        )
        try:
            for spec in specs:
                if spec.priority:
                    self.registry.load(spec.id)
        except BaseException:
            self.close()
            raise

    # -- models ----------------------------------------------------------------------
    def _load(self, spec: ModelSpec) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = spec.path
        if not (path / "config.json").is_file():
            raise InvalidRequestError(
                f"model {spec.id!r}: no config.json in its directory", param="model"
            )
        if self.verify is not None:
            self.verify(path)  # before any weights are read
        started = time.monotonic()
        adapter = adapter_for(model_type_of(path))
        if adapter.kind == "embed":
            embedder = self.compute.call(Embedder, path, self.device, self.dtype)
            loaded = LoadedModel(
                spec.id,
                path,
                adapter,
                embedder.tokenizer,
                embedder.max_tokens,
                _nbytes(embedder.model),
                model=embedder.model,
                embedder=embedder,
            )
            if self.warmup:
                self.compute.call(embedder.embed, ["warm up"])
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            register_attention()

            def build() -> Any:  # on the compute thread: its OpenMP team is the only one
                model: Any = AutoModelForCausalLM.from_pretrained(
                    path, dtype=self.dtype, attn_implementation=ATTN_IMPLEMENTATION
                )
                model = model.to(self.device)
                model.eval()
                if self.dtype_name == "int8":
                    from torch.ao.quantization import quantize_dynamic

                    model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
                return model

            model = self.compute.call(build)
            max_ctx = min(
                int(getattr(model.config, "max_position_embeddings", self.max_context_length)),
                self.max_context_length,
            )
            eos_ids = adapter.stop_token_ids(model, tokenizer)
            model_id, hook = spec.id, self.on_step
            cache = self.compute.call(
                lambda: PagedKVCache(
                    model.config,
                    self.device,
                    self.dtype,
                    budget_bytes=self._kv_budget(),
                    block_size=self.kv_block_size,
                )
            )
            scheduler = Scheduler(
                model,
                tokenizer,
                spec.id,
                eos_ids,
                cache,
                max_queue=self.max_queue,
                policy=self.policy,
                prefix_cache_blocks=self.prefix_cache_bytes // cache.bytes_per_block,
                request_timeout_s=self.request_timeout_s,
                on_step=(lambda stats: hook(model_id, stats)) if hook else None,
                compute=self.compute,
            )
            loaded = LoadedModel(
                spec.id,
                path,
                adapter,
                tokenizer,
                max_ctx,
                _nbytes(model) + cache.nbytes,
                model=model,
                scheduler=scheduler,
                eos_token_ids=eos_ids,
            )
            if self.warmup:
                warm = GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=2))
                scheduler.submit(warm, self.encode(loaded, warm)).result(120)
        log.info(
            "model loaded",
            extra={
                "model": spec.id,
                "seconds": round(time.monotonic() - started, 2),
                "family": adapter.family,
                "kind": adapter.kind,
                "device": str(self.device),
                "dtype": self.dtype_name,
            },
        )
        return loaded

    def _kv_budget(self) -> int:
        """Bytes for a model's KV pool: ``kv_cache_mb`` on CPU; on CUDA a fraction of the
        memory free once the weights are loaded."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * self.kv_cache_gpu_fraction)
        return self.kv_cache_bytes

    def _estimate(self, spec: ModelSpec) -> int:
        """Bytes the model will take once loaded, known before loading it so the registry
        can make room first: its weight files' sizes on disk, scaled from the checkpoint's
        dtype to the one it is loaded in, plus a causal LM's KV pool. Only file sizes and
        config.json are read, so nothing unverified is loaded."""
        try:
            files = [p for p in spec.path.rglob("*") if p.is_file() and not p.is_symlink()]
            # from_pretrained reads safetensors when there are any, else the .bin files.
            weights = [p for p in files if p.suffix == ".safetensors"] or [
                p for p in files if p.suffix == ".bin"
            ]
            on_disk = sum(p.stat().st_size for p in weights)
            config = json.loads((spec.path / "config.json").read_text())
        except (OSError, ValueError):
            config = None
        if not isinstance(config, dict):
            return 0  # the load itself reports what is wrong with the directory
        stored = _itemsize(config.get("dtype") or config.get("torch_dtype"))
        target = self.dtype.itemsize
        kind = adapter_for(str(config.get("model_type", ""))).kind
        if self.dtype_name == "int8" and kind == "generate":
            target = 1  # causal LMs' Linear weights are quantized; encoders are not
        # A causal LM also gets its KV pool (on CUDA sized from what is free after it).
        kv = self.kv_cache_bytes if kind == "generate" and self.device.type != "cuda" else 0
        return on_disk * target // stored + kv

    def load_model(self, model_id: str) -> None:
        self.registry.load(model_id)

    def unload_model(self, model_id: str) -> None:
        self.registry.unload(model_id)

    def close(self) -> None:
        if hasattr(self, "registry"):
            self.registry.close()
        self.compute.close()

    def get(self, model_id: str | None, kind: str = "generate") -> LoadedModel:
        loaded: LoadedModel = self.registry.get(model_id or self.default_model)
        if loaded.kind != kind:
            verb = "generation" if kind == "generate" else "embeddings"
            raise InvalidRequestError(
                f"model {loaded.model_id!r} does not serve {verb}", param="model"
            )
        return loaded

    def models(self) -> list[dict[str, Any]]:
        return self.registry.status()

    def health(self) -> dict[str, Any]:
        return {"ready": self.registry.priority_ready(), "models": self.registry.status()}

    # -- generation ------------------------------------------------------------------
    def encode(self, loaded: LoadedModel, request: GenerateRequest) -> list[int]:
        if request.messages is not None:
            tools = request.tools if request.calls_tools else None
            text = loaded.adapter.chat_prompt(loaded.tokenizer, request.messages, tools)
        else:
            text = request.prompt or ""
        ids: list[int] = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
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

    def submit(self, request: GenerateRequest, stream: bool = False) -> RequestHandle:
        """Queue ``request``; the handle gives the result, streamed text, or cancellation.
        Its constraint is compiled here, on the caller's thread (outputs.prepare). With
        ``n`` > 1 its sequences are queued as one group (prompt prefilled once)."""
        loaded = self.get(request.model)
        assert loaded.scheduler is not None
        ids = self.encode(loaded, request)
        plan = outputs.prepare(loaded, request)
        if request.n == 1:
            return loaded.scheduler.submit(request, ids, stream=stream, plan=plan)
        if stream:
            raise InvalidRequestError("n > 1 cannot be streamed", param="n")
        handles = loaded.scheduler.submit_group(
            outputs.group_requests(request), ids, outputs.group_plans(plan, request.n)
        )
        return outputs.GroupHandle(request, handles)  # type: ignore[return-value]

    def generate(self, request: GenerateRequest, timeout: float | None = None) -> GenerateResult:
        handle = self.submit(request)
        return self.finish(handle, handle.result(timeout or self.request_timeout_s + 5))

    @staticmethod
    def finish(handle: RequestHandle, result: GenerateResult) -> GenerateResult:
        """The result with its log-probabilities and parsed tool calls (outputs.finish)."""
        return outputs.finish(handle, result)

    def stream(self, request: GenerateRequest) -> Iterator[str]:
        """Text deltas as they are decoded; closing the iterator cancels the request."""
        handle = self.submit(request, stream=True)
        try:
            yield from handle
        finally:
            if not handle.done:
                handle.cancel()

    # -- embeddings ------------------------------------------------------------------
    def embed(self, texts: list[str], model: str | None = None) -> tuple[list[list[float]], int]:
        loaded = self.get(model or self.default_embedding_model, kind="embed")
        assert loaded.embedder is not None
        return self.compute.call(loaded.embedder.embed, texts)


def _itemsize(dtype: object) -> int:
    """Bytes per element of a checkpoint's ``dtype``; float32 when it names none."""
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    return value.itemsize if isinstance(value, torch.dtype) else 4


def _nbytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
