"""OpenAI model-listing schemas, with our readiness extension."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "autoglm"
    #: Extension: ``generate`` or ``embed``, and the registry's state (ready, loading, ...).
    kind: str | None = None
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
