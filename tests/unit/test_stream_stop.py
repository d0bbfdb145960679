"""Issue 10 item 1: a caller that stops reading a stream ends it with OK, not CANCELLED.

daprd's circuit breaker counts every non-OK end of a proxied call as an inference
failure (``autoglm.core.streaming``), so a hang-up must end the call gracefully: the
caller half-closes, inference cancels the generation and returns normally."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from autoglm.core import streaming
from autoglm.core.streaming import stream_generate
from autoglm.inference.app import stream_handler
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService, StopSignal
from tests.support.fakes import FakeSidecar


class EndlessService:
    """Yields deltas until stopped, then its last frame; records how the call ended."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.completed = threading.Event()
        self.closed_early = threading.Event()

    def stream(self, body: bytes, stop: StopSignal | None = None) -> Iterator[bytes]:
        assert stop is not None
        stop.on_set(self.stopped.set)
        try:
            while not self.stopped.is_set():
                yield json.dumps({"delta": "x"}).encode()
                time.sleep(0.01)
            yield json.dumps({"result": {"finish_reason": "cancelled"}}).encode()
        except GeneratorExit:
            self.closed_early.set()  # gRPC dropped the call: it ended CANCELLED
            raise
        self.completed.set()  # gRPC asked past the last frame: the call ends with OK


@pytest.fixture
def served() -> Iterator[tuple[EndlessService, int]]:
    service = EndlessService()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((stream_handler(service),))  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, port
    server.stop(None)


def test_closing_the_stream_stops_generation_and_ends_the_call_ok(
    served: tuple[EndlessService, int],
) -> None:
    service, port = served
    frames = stream_generate({"prompt": "hi"}, grpc_port=port, timeout=10)
    assert next(frames) == {"delta": "x"}
    assert next(frames) == {"delta": "x"}
    t0 = time.monotonic()
    frames.close()  # what the gateway does when its HTTP client hangs up
    assert service.stopped.is_set()
    assert service.completed.wait(5), "the call did not end normally"
    assert not service.closed_early.is_set()
    assert time.monotonic() - t0 < 2


def test_a_caller_that_never_ends_the_call_is_cancelled_after_the_grace(
    served: tuple[EndlessService, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded: inference that ignores the half-close is cancelled after the grace."""
    service, port = served
    monkeypatch.setattr(streaming, "STOP_GRACE_S", 0.3)
    service.stopped.set = lambda: None  # type: ignore[method-assign]  # deaf to the stop
    frames = stream_generate({"prompt": "hi"}, grpc_port=port, timeout=10)
    next(frames)
    t0 = time.monotonic()
    frames.close()
    assert time.monotonic() - t0 < 3


def test_a_plain_server_streaming_caller_is_served_as_before(
    served: tuple[EndlessService, int],
) -> None:
    """A caller without the stop metadata half-closes at once; that must not stop it."""
    service, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(f"/{streaming.STREAM_SERVICE}/{streaming.STREAM_METHOD}")
        frames = call(b'{"prompt": "hi"}', timeout=10)
        got = [next(frames) for _ in range(20)]
        assert not service.stopped.is_set()
        frames.cancel()
    assert got[0] == b'{"delta": "x"}'


def test_stop_cancels_a_real_generation_and_ends_with_its_result(
    demo_model_dir: Path,
) -> None:
    engine = AutoGLMEngine(demo_model_dir, model_id="demo-glm")
    try:
        service = InferenceService(engine, FakeSidecar())
        stop = StopSignal()
        body = json.dumps({"prompt": "hi", "sampling": {"max_tokens": 2000, "temperature": 0}})
        frames = []
        for raw in service.stream(body.encode(), stop):
            frames.append(json.loads(raw))
            if len(frames) == 2:
                stop.set()
        assert frames[-1]["result"]["finish_reason"] == "cancelled"
        assert len(frames) < 50
    finally:
        engine.close()
