"""Async chat completions: a chat request checked like any other, then handed to the
job path (``JobStore``); results come back through the Dapr subscription."""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.core.errors import InvalidRequestError
from autoglm.core.pubsub import Ack
from autoglm.gateway.context import RequestContext
from autoglm.gateway.jobs.protocol import JobRecord
from autoglm.gateway.jobs.store import JobStore
from autoglm.gateway.openai.chat.serving import ChatCompletionService


@dataclass
class JobService:
    store: JobStore
    chat: ChatCompletionService

    def submit(self, ctx: RequestContext, body: bytes) -> JobRecord:
        """Store and publish the job (the limits and input filter are chat's); its
        tokens are charged when its result is stored."""
        request = self.chat.parse(body)
        ctx.model = request.model  # for the audit event
        if request.stream or request.n > 1 or request.session_id:
            raise InvalidRequestError(
                "a job takes one choice (n=1), without stream or session_id", param="n"
            )
        generate = self.chat.generate_request(request, request.messages, ctx.tenant)
        return self.store.submit(ctx.tenant, generate)

    def get(self, ctx: RequestContext, job_id: str) -> JobRecord:
        return self.store.get(ctx.tenant, job_id)

    def on_result(self, body: bytes) -> Ack:
        return self.store.on_result(body)
