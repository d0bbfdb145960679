"""Model listing and admin load/unload, from inference's registry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from autoglm.core.errors import NotFoundError
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.models.protocol import ModelCard, ModelList


@dataclass
class ModelService:
    inference: InferenceClient
    #: Models configured but never loaded have no load time; report process start.
    started: int = field(default_factory=lambda: int(time.time()))

    def _card(self, entry: dict[str, Any]) -> ModelCard:
        return ModelCard(
            id=str(entry["id"]),
            created=int(entry.get("created", self.started)),
            kind=entry.get("kind"),
            state=entry.get("state"),
        )

    def list(self) -> ModelList:
        return ModelList(data=[self._card(e) for e in self.inference.models()])

    def get(self, model_id: str) -> ModelCard:
        for entry in self.inference.models():
            if entry["id"] == model_id:
                return self._card(entry)
        raise NotFoundError(f"model {model_id!r} not found", param="model", code="model_not_found")

    def manage(self, model_id: str, action: Literal["load", "unload"]) -> dict[str, Any]:
        self.get(model_id)
        return self.inference.manage(action, model_id).model_dump(mode="json")
