"""In-memory stand-in for ``SidecarAPI`` — for unit tests only (our own interface).

It models what daprd's state.redis does where our code depends on it: ETags
(first-write-wins on save and delete), first-write keys refusing un-ETagged writes, and
``ttlInSeconds`` expiry, on a clock the test moves (``advance``).
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from pydantic import BaseModel

from autoglm.core import contracts
from autoglm.core.errors import AutoGLMError, ConflictError, UnavailableError
from autoglm.core.sidecar import StateEntry

M = TypeVar("M", bound=BaseModel)


class FakeSidecar:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.state: dict[str, tuple[Any, int]] = {}
        #: key -> the fake clock's time at which it expires (``save_state(ttl_s=...)``).
        self.expires: dict[str, float] = {}
        self.now = 0.0
        self.first_write: set[str] = set()
        self.secrets: dict[str, dict[str, str]] = {}
        self.invocations: list[tuple[str, str, dict[str, Any]]] = []
        self.invoke_replies: dict[str, Any] = {}
        self.fail_publish: AutoGLMError | None = None
        self.fail_state: AutoGLMError | None = None

    def invoke(
        self, app_id: str, method: str, payload: dict[str, Any], timeout: float = 60.0
    ) -> dict[str, Any]:
        # The mesh's access lists let through only what the contract table declares:
        # a call the code makes outside it would be refused by daprd, so fail here too.
        if app_id in contracts.APPS:
            contracts.rpc(app_id, method)
        self.invocations.append((app_id, method, payload))
        reply = self.invoke_replies[method]
        if isinstance(reply, AutoGLMError):
            raise reply
        return reply(payload) if callable(reply) else dict(reply)

    def invoke_model(
        self,
        app_id: str,
        method: str,
        request: BaseModel | None,
        reply: type[M],
        timeout: float = 60.0,
    ) -> M:
        """As ``Sidecar.invoke_model``: the request as JSON (None: an empty object) through
        ``invoke`` (so its record and canned replies serve both), the reply validated as
        ``reply``."""
        payload = request.model_dump(mode="json") if request is not None else {}
        return reply.model_validate(self.invoke(app_id, method, payload, timeout))

    def publish(self, topic: str, payload: dict[str, Any], pubsub: str = "pubsub") -> None:
        if self.fail_publish:
            raise self.fail_publish
        self.published.append((topic, payload))

    def publish_soon(self, topic: str, payload: dict[str, Any], pubsub: str = "pubsub") -> None:
        """At once (tests read ``published`` right after a request); failures are
        swallowed as ``Sidecar.publish_soon``'s worker logs them."""
        with contextlib.suppress(AutoGLMError):
            self.publish(topic, payload, pubsub)

    def advance(self, seconds: float) -> None:
        """Move the fake clock: keys whose TTL has run out are gone, as in Redis."""
        self.now += seconds
        for key, at in list(self.expires.items()):
            if at <= self.now:
                self.state.pop(key, None)
                self.expires.pop(key)
                self.first_write.discard(key)

    def get_state(self, key: str, store: str = "statestore") -> StateEntry | None:
        if self.fail_state:
            raise self.fail_state
        if key not in self.state:
            return None
        value, version = self.state[key]
        return StateEntry(value, str(version))

    def save_state(
        self,
        key: str,
        value: Any,
        etag: str | None = None,
        store: str = "statestore",
        create_only: bool = False,
        ttl_s: int | None = None,
    ) -> None:
        if self.fail_state:
            raise self.fail_state
        current = self.state.get(key)
        if (create_only and current) or (
            etag is not None and (not current or str(current[1]) != etag)
        ):
            raise ConflictError(f"state {key}: modified concurrently")
        if current and etag is None and key in self.first_write:
            # As state.redis does: a key written first-write refuses later writes
            # that do not carry its ETag.
            raise UnavailableError(f"state {key}: Dapr error 500 ERR_STATE_SAVE")
        if etag is not None or create_only:
            self.first_write.add(key)
        self.state[key] = (value, (current[1] + 1) if current else 1)
        if ttl_s is not None:
            self.expires[key] = self.now + ttl_s
        else:
            self.expires.pop(key, None)  # a write without a TTL makes the key persistent

    def delete_state(self, key: str, etag: str | None = None, store: str = "statestore") -> None:
        if self.fail_state:
            raise self.fail_state
        current = self.state.get(key)
        if etag is not None and (not current or str(current[1]) != etag):
            raise ConflictError(f"state {key}: modified concurrently")
        self.state.pop(key, None)
        self.expires.pop(key, None)
        self.first_write.discard(key)

    def get_secret(self, store: str, name: str) -> dict[str, str]:
        return self.secrets[name]
