"""One interface over model families: chat formatting, stop tokens, embedding pooling.

A checkpoint's own chat template wins when it ships one; otherwise the family's format is
used, so a bare GPT-2 or a Llama base model still gets a sensible prompt. Stop tokens add
the family's end-of-turn markers to the checkpoint's ``eos_token_id``: GLM-4 ends an
assistant turn with ``<|user|>`` or ``<|observation|>``, Llama-3 with ``<|eot_id|>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

Kind = Literal["generate", "embed"]


class ModelAdapter:
    family: ClassVar[str] = "causal"
    kind: ClassVar[Kind] = "generate"
    model_types: ClassVar[tuple[str, ...]] = ()
    stop_tokens: ClassVar[tuple[str, ...]] = ()

    def chat_prompt(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return str(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return self.fallback_prompt(messages)

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*lines, "Assistant:"])

    def stop_token_ids(self, model: Any, tokenizer: Any) -> list[int]:
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        ids = (
            {int(e) for e in eos}
            if isinstance(eos, (list, tuple))
            else ({int(eos)} if eos is not None else set())
        )
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in self.stop_tokens if t in vocab)
        return sorted(ids)


class GLMAdapter(ModelAdapter):
    family = "glm"
    model_types = ("glm", "glm4", "chatglm")
    stop_tokens = ("<|endoftext|>", "<|user|>", "<|observation|>")

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}" for m in messages)
        return f"[gMASK]<sop>{turns}<|assistant|>\n"


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    stop_tokens = ("<|eot_id|>", "<|end_of_text|>", "</s>")

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
            for m in messages
        )
        return f"<|begin_of_text|>{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"


class GPT2Adapter(ModelAdapter):
    family = "gpt2"
    model_types = ("gpt2", "gpt_neo", "gptj", "gpt_neox")
    stop_tokens = ("<|endoftext|>",)


class EmbeddingAdapter(ModelAdapter):
    """BERT-style sentence encoders: pooled, L2-normalised token states."""

    family = "bert"
    kind = "embed"
    model_types = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert")

    def pooling(self, model_dir: Path) -> str:
        """sentence-transformers records its pooling in ``1_Pooling/config.json``."""
        config = model_dir / "1_Pooling" / "config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            if data.get("pooling_mode_cls_token"):
                return "cls"
        return "mean"

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)


_ADAPTERS: list[type[ModelAdapter]] = [GLMAdapter, LlamaAdapter, GPT2Adapter, EmbeddingAdapter]


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for a ``config.json`` ``model_type``; unknown types get the generic one."""
    for cls in _ADAPTERS:
        if model_type in cls.model_types:
            return cls()
    return ModelAdapter()


def model_type_of(model_dir: Path) -> str:
    return str(json.loads((model_dir / "config.json").read_text()).get("model_type", ""))
