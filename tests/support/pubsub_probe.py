"""``python -m tests.support.pubsub_probe``: a gRPC app that pins how daprd treats a
subscriber's answers (``tests/integration/test_messaging.py``).

It takes ``audit`` deliveries and answers each as its data says
(``{"probe": id, "answer": ...}``): a status (``retry``, ``success``, ``drop``), or
``fail``: a failed call. It appends the probe id to the file named by
``AUTOGLM_PROBE_LOG`` first. Other tests' audit events on the shared broker are
acknowledged. Port: ``APP_PORT``; app token:
``APP_API_TOKEN`` (both set by the launcher).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cloudevents.sdk.event import v1
from dapr.ext.grpc import TopicEventResponse

from autoglm.core.callback_server import callback_app, event_data
from autoglm.core.schemas import AUDIT_TOPIC, PUBSUB


def main() -> None:
    log = Path(os.environ["AUTOGLM_PROBE_LOG"])
    app = callback_app(4)

    dead_letter = f"{AUDIT_TOPIC}.deadletter"

    @app.subscribe(PUBSUB, AUDIT_TOPIC, dead_letter_topic=dead_letter)  # type: ignore[misc]
    def deliver(event: v1.Event) -> TopicEventResponse:
        data = json.loads(event_data(event.Data()))
        if "probe" not in data:  # another test's audit event on the shared broker
            return TopicEventResponse("success")
        with log.open("a") as out:
            out.write(f"{data['probe']}\n")
        if data["answer"] == "fail":
            raise RuntimeError("the delivery fails")
        return TopicEventResponse(data["answer"])

    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")


if __name__ == "__main__":
    main()
