"""Server-side conversations: what the routes of ``/v1/sessions`` ask of the store.

Text a client stores (the initial messages, metadata values) passes the content filter
first; keys are the caller's tenant's, except for an admin's restore, which may name
another tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoglm.core.schemas import parse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.sessions.protocol import (
    CreateSessionRequest,
    RestoreSessionRequest,
    SessionRecord,
)
from autoglm.gateway.sessions.store import SessionStore


@dataclass
class SessionService:
    store: SessionStore
    filter: ContentFilter = field(default_factory=ContentFilter)

    def create(self, ctx: RequestContext, body: bytes) -> SessionRecord:
        request = parse(CreateSessionRequest, body or b"{}")
        self.filter.check_texts((m.content for m in request.messages), "messages")
        self.filter.check_texts(request.metadata.values(), "metadata")
        return self.store.create(ctx.tenant, request)

    def get(self, ctx: RequestContext, session_id: str) -> SessionRecord:
        return self.store.get(ctx.tenant, session_id)[0]

    def delete(self, ctx: RequestContext, session_id: str) -> None:
        self.store.delete(ctx.tenant, session_id)

    def restore(self, ctx: RequestContext, session_id: str, body: bytes) -> SessionRecord:
        """Make an archived version current (``SESSIONS_ADMIN``): of the tenant the body
        names, the admin's own by default."""
        request = parse(RestoreSessionRequest, body or b"{}")
        tenant = request.tenant or ctx.tenant
        return self.store.restore_version(tenant, session_id, request.version)
