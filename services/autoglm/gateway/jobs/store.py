"""Async jobs: recorded in the state store, sent to ``inference.requests``, completed
from ``inference.results``.

The record is saved before the request is published and the 202 is sent only after
both, so an accepted job is never lost. Results arrive at least once; a job that is no
longer ``queued`` ignores a redelivered result, so completion happens exactly once.
The request id carries the tenant (``{tenant}:{job id}``; ``:`` appears in neither),
so a result finds its tenant-scoped record without a second index, and the tenant whose
tokens budget the job's tokens are charged to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from autoglm.core.contracts import INFERENCE_REQUESTS, MeshClient
from autoglm.core.errors import AutoGLMError, NotFoundError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import (
    RESULTS_TOPIC,
    GenerateRequest,
    InferenceRequestEvent,
    InferenceResultEvent,
    parse,
)
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.jobs.protocol import JobRecord
from autoglm.gateway.openai.chat.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionResponse,
)
from autoglm.gateway.openai.protocol import Usage
from autoglm.gateway.records import known_id
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.security.ratelimit import ChargeTokens

log = logging.getLogger(__name__)


#: Completes one result of another record kind; answers the delivery's ack.
ResultHandler = Callable[[str, str, InferenceResultEvent], Ack]


def job_key(tenant: str, job_id: str) -> str:
    return f"job:{tenant}:{job_id}"


@dataclass
class JobStore:
    sidecar: SidecarAPI
    _: KW_ONLY
    ttl_s: int
    #: The output filter applies to job results as to synchronous replies.
    content_filter: ContentFilter = field(default_factory=ContentFilter)
    #: Charges a completed job's tokens to its tenant's budget (``TokenAccounting``).
    charge: ChargeTokens | None = None
    _routes: dict[str, ResultHandler] = field(default_factory=dict, init=False)
    mesh: MeshClient = field(init=False)

    def __post_init__(self) -> None:
        self.mesh = MeshClient(self.sidecar)

    def submit(self, tenant: str, request: GenerateRequest) -> JobRecord:
        request = request.model_copy(update={"tenant": tenant})  # scheduled as its tenant
        job = JobRecord(tenant=tenant, model=request.model or "")
        self.sidecar.save_state(
            job_key(tenant, job.id), job.model_dump(mode="json"), create_only=True, ttl_s=self.ttl_s
        )
        try:
            self.send(tenant, job.id, request)
        except AutoGLMError:
            # Not accepted after all: remove the record so it does not sit queued forever.
            self.sidecar.delete_state(job_key(tenant, job.id))
            raise
        return job

    def send(self, tenant: str, local_id: str, request: GenerateRequest) -> None:
        """Publish ``request`` to ``inference.requests``; its result comes back to
        ``on_result`` as request id ``{tenant}:{local_id}``."""
        event = InferenceRequestEvent(
            request_id=f"{tenant}:{local_id}", reply_topic=RESULTS_TOPIC, request=request
        )
        self.mesh.publish(INFERENCE_REQUESTS, event)

    def route(self, prefix: str, handler: ResultHandler) -> None:
        """Results for ids ``{tenant}:{prefix}...`` go to ``handler(tenant, id, event)``
        (another record kind on the same job path, e.g. background responses)."""
        self._routes[prefix] = handler

    def get(self, tenant: str, job_id: str) -> JobRecord:
        entry = self.sidecar.get_state(job_key(tenant, known_id(job_id, "job", "job_id")))
        if entry is None:
            raise NotFoundError(f"job {job_id!r} not found", param="job_id")
        return JobRecord.model_validate(entry.value)

    def on_result(self, body: bytes) -> Ack:
        try:
            event = parse(InferenceResultEvent, body)
        except AutoGLMError:
            log.warning("malformed inference result dropped")
            return Ack.DROP
        tenant, _, job_id = event.request_id.rpartition(":")
        for prefix, handler in self._routes.items():
            if tenant and job_id.startswith(prefix):
                return handler(tenant, job_id, event)
        if not tenant or not job_id.startswith("job-"):
            return Ack.SUCCESS  # another publisher's request, not a gateway job
        key = job_key(tenant, job_id)
        try:
            entry = self.sidecar.get_state(key)
            if entry is None:
                log.info("result for an unknown job ignored", extra={"job_id": job_id})
                return Ack.SUCCESS
            job = JobRecord.model_validate(entry.value)
            if job.status != "queued":
                return Ack.SUCCESS  # redelivered duplicate
            job.completed = int(time.time())
            tokens = 0
            if event.result is not None:
                r = self.content_filter.filter_result(event.result)
                job.status, job.model = "completed", r.model
                job.result = ChatCompletionResponse(
                    id=f"chatcmpl-{job_id}",
                    model=r.model,
                    choices=[
                        ChatCompletionChoice(
                            index=0,
                            message=ChatCompletionMessage(content=r.text),
                            finish_reason=r.finish_reason,
                        )
                    ],
                    usage=Usage.of(r.prompt_tokens, r.completion_tokens),
                ).to_json()
                tokens = r.prompt_tokens + r.completion_tokens
            else:
                error = dict(event.error or {"message": "unknown error"})
                error.pop("status", None)
                job.status, job.error = "failed", error
            self.sidecar.save_state(
                key, job.model_dump(mode="json"), etag=entry.etag, ttl_s=self.ttl_s
            )
        except AutoGLMError as exc:
            # ETag race with a concurrent delivery, or the store is down: try again.
            log.warning("job result not stored; will be redelivered", extra={"reason": exc.message})
            return Ack.RETRY
        # Only once stored: a redelivery after a RETRY, or a duplicate, is not charged again.
        if self.charge is not None:
            self.charge(tenant, tokens)
        return Ack.SUCCESS
