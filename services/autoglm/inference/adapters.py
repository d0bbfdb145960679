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

from autoglm.core.schemas import ChatMessage, ToolDef
from autoglm.inference.tools import GLM4Format, HermesFormat, LlamaJsonFormat, ToolFormat

Kind = Literal["generate", "embed"]


class ModelAdapter:
    family: ClassVar[str] = "causal"
    kind: ClassVar[Kind] = "generate"
    model_types: ClassVar[tuple[str, ...]] = ()
    stop_tokens: ClassVar[tuple[str, ...]] = ()
    #: How this family's models call tools (tools.py).
    tool_format: ClassVar[ToolFormat] = HermesFormat()
    #: The role tool results take in the family's own format.
    tool_role: ClassVar[str] = "tool"

    def chat_prompt(
        self,
        tokenizer: Any,
        messages: list[ChatMessage] | list[dict[str, Any]],
        tools: list[ToolDef] | None = None,
    ) -> str:
        """The prompt for ``messages``. With ``tools``, a chat template that takes
        ``tools`` renders them itself; otherwise they are described in a system message
        and past calls / results are written in the family's format."""
        turns = [m.template_dict() if isinstance(m, ChatMessage) else m for m in messages]
        for turn in turns:
            if turn["role"] == "developer":
                turn["role"] = "system"
        template = getattr(tokenizer, "chat_template", None)
        if not (template and "tool" in template):
            turns = self._plain_tool_turns(turns, tools)
            tools = None
        if template:
            kwargs: dict[str, Any] = {}
            if tools:
                kwargs["tools"] = [t.model_dump(mode="json", exclude_none=True) for t in tools]
            return str(
                tokenizer.apply_chat_template(
                    turns, tokenize=False, add_generation_prompt=True, **kwargs
                )
            )
        return self.fallback_prompt(turns)

    def _plain_tool_turns(
        self, turns: list[dict[str, Any]], tools: list[ToolDef] | None
    ) -> list[dict[str, Any]]:
        """Tools, calls and results as plain turns, for templates that know none of them."""
        out: list[dict[str, Any]] = []
        for turn in turns:
            calls = turn.get("tool_calls")
            if calls:
                rendered = [
                    self.tool_format.render_call(
                        c["function"]["name"], json.dumps(c["function"]["arguments"])
                    )
                    for c in calls
                ]
                text = "\n".join(filter(None, [turn["content"], *rendered]))
                out.append({"role": "assistant", "content": text})
            elif turn["role"] == "tool":
                out.append({"role": self.tool_role, "content": turn["content"]})
            else:
                out.append({"role": turn["role"], "content": turn["content"]})
        if tools:
            described = self.tool_format.describe(tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{described}"}
            else:
                out.insert(0, {"role": "system", "content": described})
        return out

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
    tool_format = GLM4Format()
    tool_role = "observation"

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}" for m in messages)
        return f"[gMASK]<sop>{turns}<|assistant|>\n"


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "mistral")
    stop_tokens = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "</s>")
    tool_format = LlamaJsonFormat()
    tool_role = "ipython"

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
            for m in messages
        )
        return f"<|begin_of_text|>{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"


class QwenAdapter(ModelAdapter):
    """Qwen 2/3: ChatML turns, Hermes-style ``<tool_call>`` blocks."""

    family = "qwen"
    model_types = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    stop_tokens = ("<|im_end|>", "<|endoftext|>")

    def fallback_prompt(self, messages: list[dict[str, str]]) -> str:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return f"{turns}<|im_start|>assistant\n"


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


_ADAPTERS: list[type[ModelAdapter]] = [
    GLMAdapter,
    LlamaAdapter,
    QwenAdapter,
    GPT2Adapter,
    EmbeddingAdapter,
]


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for a ``config.json`` ``model_type``; unknown types get the generic one."""
    for cls in _ADAPTERS:
        if model_type in cls.model_types:
            return cls()
    return ModelAdapter()


def model_type_of(model_dir: Path) -> str:
    return str(json.loads((model_dir / "config.json").read_text()).get("model_type", ""))
