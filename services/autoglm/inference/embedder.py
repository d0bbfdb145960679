"""Sentence embeddings from BERT-style encoders loaded with ``from_pretrained``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from autoglm.core.errors import InvalidRequestError
from autoglm.inference.adapters import EmbeddingAdapter

#: Inputs per forward pass; bounds activation memory for large requests.
CHUNK = 32


class Embedder:
    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.adapter = EmbeddingAdapter()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.model: Any = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device
        self.mode = self.adapter.pooling(model_dir)
        self.max_tokens = int(getattr(self.model.config, "max_position_embeddings", 512))
        self.dimensions = int(self.model.config.hidden_size)
        # Encoders are cheap per call; one lock keeps concurrent callers from thrashing.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors for ``texts`` and the number of input tokens consumed."""
        if not texts:
            raise InvalidRequestError("input must not be empty", param="input")
        vectors: list[list[float]] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), CHUNK):
                batch = texts[start : start + CHUNK]
                enc = self.tokenizer(batch, padding=True, truncation=False, return_tensors="pt")
                if enc["input_ids"].shape[1] > self.max_tokens:
                    raise InvalidRequestError(
                        f"an input has {enc['input_ids'].shape[1]} tokens; this model takes "
                        f"at most {self.max_tokens}",
                        param="input",
                        code="context_length_exceeded",
                    )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.model(**enc).last_hidden_state
                pooled = self.adapter.pool(hidden, enc["attention_mask"], self.mode)
                vectors.extend(pooled.float().cpu().tolist())
                tokens += int(enc["attention_mask"].sum())
        return vectors, tokens
