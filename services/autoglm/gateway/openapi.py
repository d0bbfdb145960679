"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the same pydantic
models the routes validate with, so it cannot drift from what the gateway accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, TypeAdapter

from autoglm.core.archive_protocol import (
    AttachmentInfo,
    AttachmentPutReply,
    AttachmentStartRequest,
    AuditQueryReply,
)
from autoglm.core.schemas import SafeId
from autoglm.gateway.audit_log.protocol import AuditQuery
from autoglm.gateway.jobs.protocol import JobRecord
from autoglm.gateway.openai.chat.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from autoglm.gateway.openai.completions.protocol import CompletionRequest, CompletionResponse
from autoglm.gateway.openai.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from autoglm.gateway.openai.models.protocol import ModelCard, ModelList
from autoglm.gateway.openai.protocol import ErrorResponse
from autoglm.gateway.openai.responses.protocol import (
    DeletedResponse,
    InputItemsPage,
    InputItemsQuery,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    RetrieveQuery,
)
from autoglm.gateway.sessions.protocol import (
    CreateSessionRequest,
    RestoreSessionRequest,
    SessionRecord,
)

_ERRORS = {
    400: "Invalid request (the message names the field)",
    401: "Missing or invalid credentials",
    403: "The caller's role may not do this",
    404: "Not found (also for another tenant's resources)",
    408: "The body did not arrive within BODY_TIMEOUT_S",
    409: "Conflict: concurrent change or wrong upload offset",
    413: "Body too large",
    422: "Refused content (type, checksum)",
    429: "Rate limited; see Retry-After",
    503: "A dependency is unavailable or overloaded",
    504: "Timed out",
}


#: Path parameters are ids: the schema of ``SafeId``, so the document states its rule.
_ID_SCHEMA: dict[str, Any] = TypeAdapter(SafeId).json_schema()


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    status: int = 200
    stream: type[BaseModel] | None = None
    raw_body: bool = False
    params: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: Query parameters described by a model's fields (optional ones not required).
    query: type[BaseModel] | None = None
    #: Body fields the gateway sets itself (the caller's tenant): not in the schema.
    server_fields: tuple[str, ...] = ()
    #: The reply is the raw bytes of a file, served with its stored MIME type.
    binary: bool = False
    public: bool = False


ROUTES = (
    Route("get", "/healthz", "Liveness", None, public=True),
    Route(
        "get", "/readyz", "Readiness: sidecar, state store and inference answer", None, public=True
    ),
    Route(
        "post",
        "/v1/chat/completions",
        "Chat completion (stream=true: server-sent events)",
        ChatCompletionResponse,
        ChatCompletionRequest,
        stream=ChatCompletionChunk,
    ),
    Route(
        "post",
        "/v1/responses",
        "Create a response (OpenAI Responses API; stream=true: server-sent events; "
        "background=true: answered queued at once)",
        ResponseObject,
        ResponsesRequest,
        stream=ResponseEvent,
    ),
    Route(
        "get",
        "/v1/responses/{response_id}",
        "A stored response (restored from the archive if lost); stream=true replays a "
        "background response's events after starting_after",
        ResponseObject,
        params=(("response_id", "path"),),
        query=RetrieveQuery,
        stream=ResponseEvent,
    ),
    Route(
        "delete",
        "/v1/responses/{response_id}",
        "Delete a stored response (from the archive too)",
        DeletedResponse,
        params=(("response_id", "path"),),
    ),
    Route(
        "post",
        "/v1/responses/{response_id}/cancel",
        "Cancel a background response (stops its generation)",
        ResponseObject,
        params=(("response_id", "path"),),
    ),
    Route(
        "get",
        "/v1/responses/{response_id}/input_items",
        "A page of a stored response's input items",
        InputItemsPage,
        params=(("response_id", "path"),),
        query=InputItemsQuery,
    ),
    Route(
        "post",
        "/v1/completions",
        "Text completion (stream=true: server-sent events)",
        CompletionResponse,
        CompletionRequest,
        stream=CompletionResponse,
    ),
    Route("post", "/v1/embeddings", "Embeddings", EmbeddingResponse, EmbeddingRequest),
    Route("get", "/v1/models", "List models", ModelList),
    Route("get", "/v1/models/{model_id}", "One model", ModelCard, params=(("model_id", "path"),)),
    Route(
        "post",
        "/v1/models/{model_id}/load",
        "Load a model (admin)",
        None,
        params=(("model_id", "path"),),
    ),
    Route(
        "post",
        "/v1/models/{model_id}/unload",
        "Unload a model (admin)",
        None,
        params=(("model_id", "path"),),
    ),
    Route(
        "post", "/v1/sessions", "Create a session", SessionRecord, CreateSessionRequest, status=201
    ),
    Route(
        "get",
        "/v1/sessions/{session_id}",
        "Read a session (restored from the archive if lost)",
        SessionRecord,
        params=(("session_id", "path"),),
    ),
    Route(
        "delete",
        "/v1/sessions/{session_id}",
        "Delete a session",
        None,
        params=(("session_id", "path"),),
    ),
    Route(
        "post",
        "/v1/sessions/{session_id}/restore",
        "Restore a chosen archived version as the current history (admin)",
        SessionRecord,
        RestoreSessionRequest,
        params=(("session_id", "path"),),
    ),
    Route(
        "post",
        "/v1/jobs",
        "Submit an async chat completion",
        JobRecord,
        ChatCompletionRequest,
        status=202,
    ),
    Route(
        "get", "/v1/jobs/{job_id}", "Job status and result", JobRecord, params=(("job_id", "path"),)
    ),
    Route(
        "post",
        "/v1/attachments",
        "Start an upload",
        AttachmentInfo,
        AttachmentStartRequest,
        status=201,
        server_fields=("tenant",),
    ),
    Route(
        "put",
        "/v1/attachments/{attachment_id}",
        "Upload the chunk at offset",
        AttachmentPutReply,
        raw_body=True,
        params=(("attachment_id", "path"), ("offset", "query")),
    ),
    Route(
        "get",
        "/v1/attachments/{attachment_id}",
        "Download a finished attachment",
        None,
        params=(("attachment_id", "path"),),
        binary=True,
    ),
    Route(
        "get",
        "/v1/audit",
        "A page of one tenant's audit events for one UTC day (admin)",
        AuditQueryReply,
        query=AuditQuery,
    ),
)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE_HEADERS = {
    "Content-Disposition": {"schema": {"type": "string"}, "description": "The file's name"},
    "x-autoglm-sha256": {"schema": {"type": "string"}, "description": "SHA-256 of the file"},
}


def build_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], omit: tuple[str, ...] = ()) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        for name in omit:
            del schema["properties"][name]
        if omit and "required" in schema:
            schema["required"] = [r for r in schema["required"] if r not in omit]
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error_ref = ref(ErrorResponse)
    paths: dict[str, Any] = {}
    for route in ROUTES:
        ok: dict[str, Any] = {"description": "OK"}
        if route.binary:
            # The file's bytes, with its stored MIME type as Content-Type (any type, so
            # ``*/*``; ``application/octet-stream`` is the generic one).
            ok["content"] = {"application/octet-stream": _BINARY, "*/*": _BINARY}
            ok["headers"] = _FILE_HEADERS
        else:
            schema = ref(route.response) if route.response else {"type": "object"}
            ok["content"] = {"application/json": {"schema": schema}}
        if route.stream is not None:
            ok["content"]["text/event-stream"] = {
                "schema": {"type": "string"},
                "x-event-schema": ref(route.stream),
            }
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.method + re.sub(r"[^A-Za-z0-9]+", "_", route.path),
            "responses": {str(route.status): ok},
        }
        if not route.public:
            op["security"] = [{"bearer": []}]
            for status, text in _ERRORS.items():
                op["responses"][str(status)] = {
                    "description": text,
                    "content": {"application/json": {"schema": error_ref}},
                }
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.body, route.server_fields)}},
            }
        elif route.raw_body:
            op["requestBody"] = {"required": True, "content": {"application/octet-stream": _BINARY}}
        parameters: list[dict[str, Any]] = []
        if route.params:
            parameters += [
                {
                    "name": name,
                    "in": where,
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0} if where == "query" else _ID_SCHEMA,
                }
                for name, where in route.params
            ]
        if route.query is not None:
            query = route.query.model_json_schema()
            parameters += [
                {
                    "name": name,
                    "in": "query",
                    "required": name in query.get("required", ()),
                    "schema": schema,
                }
                for name, schema in query["properties"].items()
            ]
        if parameters:
            op["parameters"] = parameters
        paths.setdefault(route.path, {})[route.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "AutoGLM Mesh gateway", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "JWT or API key"}
            },
        },
    }


def openapi_blueprint() -> Blueprint:
    bp = Blueprint("openapi", __name__)
    document = build_document()

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    return bp
