"""One error hierarchy for every app.

Each error knows its HTTP status and OpenAI error ``type`` so the gateway maps it in one
place, and it round-trips through a plain dict so an error raised in ``inference`` crosses
the Dapr sidecars as a structured payload and is re-raised unchanged in the gateway.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AutoGLMError(Exception):
    """Base class: a failure the caller can be told about without leaking internals."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

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


class InvalidRequestError(AutoGLMError):
    """The request is malformed or violates a limit; ``param`` names the field."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationError(AutoGLMError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(AutoGLMError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFoundError(AutoGLMError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class ConflictError(AutoGLMError):
    """A concurrent writer won (ETag / version mismatch); nothing was overwritten."""

    status = 409
    type = "conflict_error"
    default_code = "conflict"


class PayloadTooLargeError(AutoGLMError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class UnprocessableError(AutoGLMError):
    status = 422
    type = "invalid_request_error"
    default_code = "unprocessable"


class RateLimitError(AutoGLMError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message, code=code, param=param, details=details)
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


class UnavailableError(AutoGLMError):
    """A dependency (sidecar, model, queue) cannot take the request right now."""

    status = 503
    type = "server_error"
    default_code = "unavailable"


class OverloadedError(UnavailableError):
    default_code = "overloaded"


class DeadlineExceededError(AutoGLMError):
    status = 504
    type = "server_error"
    default_code = "timeout"


_BY_STATUS: dict[int, type[AutoGLMError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: RateLimitError,
    500: InternalError,
    503: UnavailableError,
    504: DeadlineExceededError,
}
