"""The Dapr edge of the archiver app: which handler serves each method and topic."""

from __future__ import annotations

from concurrent import futures
from typing import Any

from dapr.ext.grpc import App

from autoglm.archiver.serving import ArchiverService
from autoglm.core import contracts
from autoglm.core.bulk_delivery import BulkConfig, BulkDelivery, TopicHandler
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


def build_app(
    service: ArchiverService, max_concurrent_calls: int, bulk: BulkConfig | None = None
) -> App:
    """The archiver's gRPC app; with ``bulk``, both topics are subscribed in bulk and
    their entries run on a pool with a thread for each entry of a bulk of each topic
    (daprd sends one bulk per topic at a time; their writes share group commits)."""
    topics: dict[contracts.Topic[Any], TopicHandler] = {
        contracts.SESSION_SNAPSHOTS: service.on_snapshot,
        contracts.AUDIT_EVENTS: service.on_audit,
    }
    interceptors = []
    if bulk is not None:
        pool = futures.ThreadPoolExecutor(
            bulk.max_messages * len(topics), thread_name_prefix="bulk-delivery"
        )
        interceptors.append(BulkDelivery({t.name: h for t, h in topics.items()}, pool))
    app = callback_app(max_concurrent_calls, interceptors)
    configs = {t.name: bulk for t in topics} if bulk is not None else None
    serve(app, endpoint(service), topics, bulk=configs)
    app.register_health_check(service.check_health)  # type: ignore[no-untyped-call]
    return app
