"""Typed access to the app's own Dapr sidecar over its HTTP API.

Everything that leaves an app goes through here: service invocation, pub/sub, state and
secrets. Keeping it one small class means the apps' logic can be tested against a fake
with the same interface (``SidecarAPI``), while integration and e2e tests use a real daprd.
Errors come back as ``AutoGLMError`` subclasses: a dead sidecar is ``UnavailableError``,
an ETag race ``ConflictError``, a structured error from another app is re-raised as itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
from opentelemetry import propagate
from pydantic import BaseModel, ValidationError

from autoglm.core.bulk_publish import Event, bulk_entries, failed_indices
from autoglm.core.deferred import DeferredPublisher
from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from autoglm.core.localhttp import LocalHTTP, LocalResponse
from autoglm.core.schemas import PUBSUB, STATESTORE

#: What may not appear in a name that becomes one segment of a daprd URL path. HTTP
#: clients resolve ``..`` segments, so ``session:a:x/../../secrets/vault/jwt`` would
#: reach another route (or another tenant's key) if it were let through.
_UNSAFE_SEGMENT = re.compile(r"[/\\?#%\s\x00-\x1f\x7f]")


def path_segment(value: str, what: str) -> str:
    """``value`` if it is safe as one URL path segment, else an InvalidRequestError."""
    if not value or value in (".", "..") or _UNSAFE_SEGMENT.search(value):
        raise InvalidRequestError(
            f"{what} {value[:80]!r} is not allowed: it may not be empty, '.' or '..', "
            "or contain '/', '\\', '?', '#', '%', whitespace or control characters"
        )
    return value


M = TypeVar("M", bound=BaseModel)

#: Connections to the local daprd kept open per client.
KEEPALIVE = 256

#: A reply from daprd (``LocalHTTP``'s, or httpx's where a test hands the sidecar one).
Response = LocalResponse | httpx.Response

#: daprd prefixes state keys as ``{app id}||{key}`` and refuses a key that holds the
#: separator itself (ERR_MALFORMED_REQUEST), so such an id can never name a record.
STATE_KEY_SEPARATOR = "||"


def state_key(key: str) -> str:
    """``key`` if daprd can store it, else an InvalidRequestError naming the problem."""
    if STATE_KEY_SEPARATOR in key:
        raise InvalidRequestError(
            "ids may not contain '||' (reserved by Dapr as its state key separator)",
            code="invalid_id",
        )
    return key


@dataclass(frozen=True)
class StateEntry:
    value: Any
    etag: str | None


class StateAPI(Protocol):
    """The state store part of ``SidecarAPI``, for code that needs only that."""

    def get_state(self, key: str, store: str = ...) -> StateEntry | None: ...

    def save_state(
        self,
        key: str,
        value: Any,
        etag: str | None = ...,
        store: str = ...,
        create_only: bool = ...,
        ttl_s: int | None = ...,
    ) -> None: ...


class SidecarAPI(StateAPI, Protocol):
    """What apps need from Dapr; implemented by ``Sidecar`` and by test fakes."""

    def invoke(
        self, app_id: str, method: str, payload: dict[str, Any], timeout: float = ...
    ) -> dict[str, Any]: ...

    def invoke_model(
        self,
        app_id: str,
        method: str,
        request: BaseModel | None,
        reply: type[M],
        timeout: float = ...,
    ) -> M:
        """``invoke`` with models in and out (what ``MeshClient`` calls): a reply that
        is not ``reply`` raises as ``invoke`` would, or ``ValidationError``."""
        ...

    def publish(self, topic: str, payload: dict[str, Any], pubsub: str = ...) -> None: ...

    def publish_soon(self, topic: str, payload: dict[str, Any], pubsub: str = ...) -> None:
        """Publish once the caller has moved on (``autoglm.core.deferred``), for events
        whose effect is durable elsewhere or that only record a request; errors are
        logged, never raised."""
        ...

    def delete_state(self, key: str, etag: str | None = ..., store: str = ...) -> None: ...

    def get_secret(self, store: str, name: str) -> dict[str, str]: ...


@runtime_checkable
class ActorAPI(Protocol):
    """Dapr actor invocation (``Sidecar`` has it; test fakes need not)."""

    def invoke_actor(
        self,
        actor_type: str,
        actor_id: str,
        method: str,
        payload: dict[str, Any],
        timeout: float = ...,
    ) -> dict[str, Any]: ...


class Sidecar:
    """Client for the local daprd HTTP API (``DAPR_HTTP_PORT``, default 3500)."""

    def __init__(
        self,
        http_port: int | None = None,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
        api_token: str | None = None,
    ) -> None:
        port = http_port or int(os.environ.get("DAPR_HTTP_PORT", "3500"))
        token = api_token or os.environ.get("DAPR_API_TOKEN")
        headers = {"dapr-api-token": token} if token else {}
        self.base_url = f"http://{host}:{port}"
        # Every connection kept alive (the gateway serves every client at once), on the
        # standard library's HTTP/1.1: a third of httpx's CPU per call (localhttp).
        self._http: LocalHTTP | httpx.Client = LocalHTTP(
            host, port, timeout=timeout, headers=headers, max_idle=KEEPALIVE
        )
        self._deferred: DeferredPublisher | None = None
        self._deferred_lock = threading.Lock()
        self._app_id_read: str | None = None

    def close(self) -> None:
        if self._deferred is not None:
            self._deferred.flush()
        self._http.close()

    # -- transport -------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        json_bytes: bytes | None = None,
        timeout: float | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """``json_body`` is encoded here; ``json_bytes`` is JSON already encoded."""
        headers = dict(headers or {})
        propagate.inject(headers)  # W3C traceparent, so daprd continues our trace
        if json_bytes is not None:
            headers["Content-Type"] = "application/json"
        try:
            # ``timeout`` None: the client's own (a test's httpx client: none).
            return self._http.request(
                method,
                path,
                json=json_body,
                content=json_bytes,
                headers=headers,
                params=params,
                timeout=timeout,
            )
        except httpx.TimeoutException:
            raise DeadlineExceededError(f"Dapr sidecar call {path} timed out") from None
        except httpx.TransportError:
            raise UnavailableError(
                "Dapr sidecar is not reachable", code="sidecar_unavailable"
            ) from None

    @staticmethod
    def _dapr_error(resp: Response, what: str) -> AutoGLMError:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        code = body.get("errorCode", "") if isinstance(body, dict) else ""
        if resp.status_code == 409 or "ETAG_MISMATCH" in code:
            return ConflictError(f"{what}: modified concurrently", code="etag_mismatch")
        if resp.status_code == 404:
            return NotFoundError(f"{what}: not found")
        if resp.status_code == 403:
            # Dapr's access lists (accessControl, secret and pub/sub scopes) refused it.
            return PermissionDeniedError(f"{what}: not allowed for this app", code="forbidden")
        if resp.status_code in (500, 502, 503) and "ERR_DIRECT_INVOKE" in code:
            return UnavailableError(f"{what}: target app unavailable", code="upstream_unavailable")
        return UnavailableError(f"{what}: Dapr error {resp.status_code} {code}".strip())

    # -- service invocation ----------------------------------------------------------
    def invoke(
        self, app_id: str, method: str, payload: dict[str, Any], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Call ``method`` on ``app_id``; a structured ``error`` reply is raised as itself."""
        resp = self._request(
            "POST", _invoke_path(app_id, method), json_body=payload, timeout=timeout
        )
        return self._reply(resp, f"invoke {app_id}/{method}")

    def invoke_model(
        self,
        app_id: str,
        method: str,
        request: BaseModel | None,
        reply: type[M],
        timeout: float = 60.0,
    ) -> M:
        """``invoke`` with models: ``request`` (None: an empty object) is encoded and the
        reply validated as ``reply`` by pydantic straight from and to JSON, without a
        dict in between (a third of the CPU each way; issue 15). A reply that is not
        ``reply`` (an app's structured error, Dapr's own) is then read as ``invoke``
        reads it: errors are raised as there, a malformed reply is a ``ValidationError``.
        Safe because no reply model accepts an error object (``extra="forbid"``, required
        fields; ``tests/unit/test_mesh_client.py``)."""
        body = request.model_dump_json().encode() if request is not None else b"{}"
        resp = self._request("POST", _invoke_path(app_id, method), json_bytes=body, timeout=timeout)
        if resp.status_code == 200:
            with contextlib.suppress(ValidationError):
                return reply.model_validate_json(resp.content)
        return reply.model_validate(self._reply(resp, f"invoke {app_id}/{method}"))

    def invoke_actor(
        self,
        actor_type: str,
        actor_id: str,
        method: str,
        payload: dict[str, Any],
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Call ``method`` of the actor ``actor_type/actor_id`` (on whichever replica
        Dapr's placement gives it); a structured ``error`` reply is raised as itself,
        anything Dapr itself refused or could not deliver as ``UnavailableError`` with
        code ``actor_unavailable``."""
        path = (
            f"/v1.0/actors/{path_segment(actor_type, 'actor type')}/"
            f"{path_segment(actor_id, 'actor id')}/method/{path_segment(method, 'method')}"
        )
        resp = self._request("POST", path, json_body=payload, timeout=timeout)
        body, error = self._body(resp)
        if error is not None:
            raise error
        if resp.status_code >= 400 or not isinstance(body, dict):
            # Placement has no host for the type (yet), the replica holding the actor
            # went away (before or during the call), or daprd refused the call.
            detail = self._dapr_error(resp, f"actor {actor_type}/{method}").message
            raise UnavailableError(detail, code="actor_unavailable")
        return body

    @staticmethod
    def _body(resp: Response) -> tuple[Any, AutoGLMError | None]:
        """The reply's JSON, and the structured error an app answered with, if any."""
        try:
            body = resp.json()
        except ValueError:
            return None, None
        if (
            isinstance(body, dict)
            and isinstance(body.get("error"), dict)
            and "status" in body["error"]
        ):
            return body, AutoGLMError.from_payload(body["error"])
        return body, None

    def _reply(self, resp: Response, what: str) -> dict[str, Any]:
        body, error = self._body(resp)
        if error is not None:
            raise error
        if resp.status_code >= 400 or not isinstance(body, dict):
            raise self._dapr_error(resp, what)
        return body

    @staticmethod
    def _state_path(store: str, key: str) -> str:
        segment = path_segment(state_key(key), "state key")
        return f"/v1.0/state/{path_segment(store, 'state store')}/{segment}"

    # -- pub/sub ---------------------------------------------------------------------
    def publish(self, topic: str, payload: dict[str, Any], pubsub: str = PUBSUB) -> None:
        """Publish as a CloudEvent; returns only once the broker accepted it."""
        self._publish_with(topic, payload, pubsub, {})

    def _publish_with(
        self, topic: str, payload: dict[str, Any], pubsub: str, headers: dict[str, str]
    ) -> None:
        """``publish`` with a trace context captured earlier (``headers``), if any."""
        path = f"/v1.0/publish/{path_segment(pubsub, 'pubsub')}/{path_segment(topic, 'topic')}"
        resp = self._request("POST", path, json_body=payload, headers=headers or None)
        if resp.status_code >= 300:
            raise self._dapr_error(resp, f"publish {topic}")

    def _publish_bulk(self, topic: str, events: list[Event], pubsub: str = PUBSUB) -> list[int]:
        """Publish ``events`` (each with its trace context) in one Dapr bulk publish;
        the indices of those daprd did not publish (``autoglm.core.bulk_publish``)."""
        path = (
            f"/v1.0-alpha1/publish/bulk/{path_segment(pubsub, 'pubsub')}/"
            f"{path_segment(topic, 'topic')}"
        )
        entries = bulk_entries(events, source=self._app_id())
        # The request's own span goes into the first event's trace (not a new trace).
        resp = self._request("POST", path, json_body=entries, headers=events[0][1] or None)
        if resp.status_code < 300:
            return []
        try:
            body = resp.json()
        except ValueError:
            body = None
        return failed_indices(body, len(events))

    def _app_id(self) -> str | None:
        """This app's id as its daprd has it (the ``source`` daprd gives the events of a
        single publish), read once from daprd's metadata; None until it answers."""
        if self._app_id_read is None:
            resp = self._request("GET", "/v1.0/metadata")
            try:
                body = resp.json() if resp.status_code == 200 else None
            except ValueError:
                body = None
            self._app_id_read = body.get("id") if isinstance(body, dict) else None
        return self._app_id_read

    def publish_soon(self, topic: str, payload: dict[str, Any], pubsub: str = PUBSUB) -> None:
        if self._deferred is None:
            with self._deferred_lock:
                if self._deferred is None:
                    self._deferred = DeferredPublisher(
                        self._publish_with, publish_bulk=self._publish_bulk
                    )
        self._deferred.submit(topic, payload, pubsub)

    # -- state -----------------------------------------------------------------------
    def get_state(self, key: str, store: str = STATESTORE) -> StateEntry | None:
        resp = self._request("GET", self._state_path(store, key))
        if resp.status_code == 204 or (resp.status_code == 200 and not resp.content):
            return None
        if resp.status_code != 200:
            raise self._dapr_error(resp, f"state {key}")
        return StateEntry(value=resp.json(), etag=resp.headers.get("etag"))

    def save_state(
        self,
        key: str,
        value: Any,
        etag: str | None = None,
        store: str = STATESTORE,
        create_only: bool = False,
        ttl_s: int | None = None,
    ) -> None:
        """Write ``key``. With ``etag`` (or ``create_only``) a concurrent writer's win is a
        ``ConflictError``; without either it is last-write-wins. ``ttl_s`` expires it."""
        item: dict[str, Any] = {"key": state_key(key), "value": value}
        if ttl_s is not None:
            item["metadata"] = {"ttlInSeconds": str(ttl_s)}
        if etag is not None or create_only:
            item["options"] = {"concurrency": "first-write"}
            if etag is not None:
                item["etag"] = etag
        resp = self._request("POST", f"/v1.0/state/{store}", json_body=[item])
        if resp.status_code >= 300:
            # state.redis reports a create-only write to an existing key as a failed
            # conditional script ("failed to set key"), not as an ETag mismatch.
            if create_only and etag is None and "failed to set key" in resp.text:
                raise ConflictError(f"state {key}: already exists", code="already_exists")
            raise self._dapr_error(resp, f"state {key}")

    def delete_state(self, key: str, etag: str | None = None, store: str = STATESTORE) -> None:
        resp = self._request(
            "DELETE",
            self._state_path(store, key),
            headers={"If-Match": etag} if etag else None,
            params={"concurrency": "first-write"} if etag else None,
        )
        if resp.status_code >= 300:
            raise self._dapr_error(resp, f"state {key}")

    # -- secrets ---------------------------------------------------------------------
    def get_secret(self, store: str, name: str) -> dict[str, str]:
        path = f"/v1.0/secrets/{path_segment(store, 'secret store')}/{path_segment(name, 'secret')}"
        resp = self._request("GET", path)
        if resp.status_code != 200:
            raise self._dapr_error(resp, f"secret {store}/{name}")
        data = resp.json()
        return {str(k): str(v) for k, v in data.items()}

    # -- health ----------------------------------------------------------------------
    def wait_outbound(self, timeout: float = 60.0) -> None:
        """Block until the sidecar's outbound API (state, secrets, invoke) answers.

        daprd and the app start together; an app that needs a secret before it can
        listen waits here instead of failing on the race."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._http.get("/v1.0/healthz/outbound", timeout=2.0).status_code == 204:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise UnavailableError(
            f"Dapr sidecar at {self.base_url} not up after {timeout:.0f}s",
            code="sidecar_unavailable",
        )

    def metadata(self) -> dict[str, Any]:
        """The sidecar's ``/v1.0/metadata``: app id, loaded components, subscriptions."""
        resp = self._request("GET", "/v1.0/metadata", timeout=5.0)
        if resp.status_code != 200:
            raise self._dapr_error(resp, "metadata")
        body = resp.json()
        return body if isinstance(body, dict) else {}

    def healthy(self) -> bool:
        try:
            return self._http.get("/v1.0/healthz", timeout=2.0).status_code == 204
        except httpx.TransportError:
            return False


def _invoke_path(app_id: str, method: str) -> str:
    return f"/v1.0/invoke/{path_segment(app_id, 'app id')}/method/{path_segment(method, 'method')}"


def error_reply(exc: AutoGLMError) -> str:
    """The JSON body an app returns over invocation when a call fails."""
    return json.dumps({"error": exc.to_payload()})
