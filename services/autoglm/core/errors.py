"""One error hierarchy for every app.

Each error knows its HTTP status and OpenAI error ``type`` so the gateway maps it in one
place, and it round-trips through a plain dict so an error raised in ``inference`` crosses
the Dapr sidecars as a structured payload and is re-raised unchanged in the gateway.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: The class an error payload of each status is rebuilt as: the first that declared it.
_BY_STATUS: dict[int, type[AutoGLMError]] = {}


class AutoGLMError(Exception):
    """Base class: a failure the caller can be told about without leaking internals.

    A subclass declares what sets it apart in its class line, e.g.
    ``class NotFoundError(AutoGLMError, status=404, type="not_found_error", code=...)``;
    what it leaves out it inherits."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
            _BY_STATUS.setdefault(status, cls)
        if type is not None:
            cls.type = type
        if code is not None:
            cls.default_code = code

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        # Machine-readable facts a caller acts on (e.g. the offset an upload resumes from),
        # so it never has to parse ``message``.
        self.details = dict(details or {})

    def to_payload(self) -> dict[str, Any]:
        """The structured form sent over Dapr and (wrapped in ``error``) to HTTP clients."""
        payload: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
            "status": self.status,
        }
        if self.details:
            payload["details"] = self.details
        return payload

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> AutoGLMError:
        """Rebuild the error raised on the other side of a sidecar."""
        status = int(payload.get("status", 500))
        cls = _BY_STATUS.get(status, InternalError)
        details = payload.get("details")
        return cls(
            str(payload.get("message", "upstream error")),
            code=payload.get("code"),
            param=payload.get("param"),
            details=details if isinstance(details, dict) else None,
        )


class InvalidRequestError(
    AutoGLMError, status=400, type="invalid_request_error", code="invalid_request"
):
    """The request is malformed or violates a limit; ``param`` names the field."""


class AuthenticationError(
    AutoGLMError, status=401, type="authentication_error", code="invalid_api_key"
):
    """No valid credentials came with the request."""


class PermissionDeniedError(AutoGLMError, status=403, type="permission_error", code="forbidden"):
    """The caller is known but may not do this."""


class NotFoundError(AutoGLMError, status=404, type="not_found_error", code="not_found"):
    """Nothing by that id, or nothing the caller may see."""


class ConflictError(AutoGLMError, status=409, type="conflict_error", code="conflict"):
    """A concurrent writer won (ETag / version mismatch); nothing was overwritten."""


class PayloadTooLargeError(
    AutoGLMError, status=413, type="invalid_request_error", code="payload_too_large"
):
    """A body, file or chunk over its limit."""


class UnprocessableError(
    AutoGLMError, status=422, type="invalid_request_error", code="unprocessable"
):
    """Well-formed, but its content cannot be used (a checksum or file type mismatch)."""


class RateLimitError(AutoGLMError, status=429, type="rate_limit_error", code="rate_limited"):
    """Over a limit for now; ``retry_after`` says when to try again."""

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        if retry_after is not None:
            # Kept in ``details`` so that it survives the trip across a sidecar.
            self.details["retry_after"] = retry_after

    @property
    def retry_after(self) -> int | None:
        """Seconds until a retry may succeed (the HTTP ``Retry-After`` header)."""
        value = self.details.get("retry_after")
        return int(value) if value is not None else None


class InternalError(AutoGLMError):
    """An unexpected failure; the message must not carry internals."""


class UnavailableError(AutoGLMError, status=503, code="unavailable"):
    """A dependency (sidecar, model, queue) cannot take the request right now."""


class OverloadedError(UnavailableError, code="overloaded"):
    """The queue is full: a retry later can succeed."""


class DeadlineExceededError(AutoGLMError, status=504, code="timeout"):
    """The work did not finish in time."""
