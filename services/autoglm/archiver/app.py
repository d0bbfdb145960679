"""The Dapr edge of the archiver app: which handler serves each method and topic."""

from __future__ import annotations

from dapr.ext.grpc import App

from autoglm.archiver.serving import ArchiverService
from autoglm.core import contracts
from autoglm.core.callback_server import Endpoint, callback_app, serve
from autoglm.core.contracts import ARCHIVER


def endpoint(service: ArchiverService) -> Endpoint:
    return Endpoint(
        ARCHIVER,
        {
            contracts.RESTORE: service.restore,
            contracts.ATTACHMENT_START: service.attachments.start,
            contracts.ATTACHMENT_PUT: service.attachment_put,
            contracts.ATTACHMENT_GET: service.attachments.get,
            contracts.AUDIT_QUERY: service.audit.query,
            contracts.ARCHIVER_HEALTH: service.health,
        },
        failure=service.storage_failure,
    )


def build_app(service: ArchiverService, max_concurrent_calls: int) -> App:
    app = callback_app(max_concurrent_calls)
    serve(
        app,
        endpoint(service),
        {
            contracts.SESSION_SNAPSHOTS: service.on_snapshot,
            contracts.AUDIT_EVENTS: service.on_audit,
        },
    )
    app.register_health_check(service.check_health)  # type: ignore[no-untyped-call]
    return app
