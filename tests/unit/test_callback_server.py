"""The app's gRPC callback server takes as many calls at once as it is sized for, and
stops without aborting the calls in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from dapr.ext.grpc import App

from autoglm.core.callback_server import callback_app, stop_gracefully

SERVICE, METHOD = "test.Blocking", "Wait"


@dataclass
class Blocking:
    app: App
    call: grpc.UnaryUnaryMultiCallable
    entered: threading.Semaphore
    release: threading.Event


@contextmanager
def serving(size: int) -> Iterator[Blocking]:
    """A callback app of ``size`` calls whose one method blocks until released."""
    app = callback_app(size)
    entered, release = threading.Semaphore(0), threading.Event()

    def wait(body: bytes, _ctx: grpc.ServicerContext) -> bytes:
        entered.release()
        release.wait(10)
        return body

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(wait)}
    )
    app.add_external_service(  # type: ignore[no-untyped-call]
        lambda h, server: server.add_generic_rpc_handlers((h,)), handler
    )
    port = app._server.add_insecure_port("127.0.0.1:0")
    app._server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Blocking(app, channel.unary_unary(f"/{SERVICE}/{METHOD}"), entered, release)
    finally:
        release.set()
        channel.close()
        app._server.stop(grace=None)


def test_runs_a_whole_batch_at_once_beyond_the_sdk_default_of_ten() -> None:
    with serving(40) as srv:
        pending = [srv.call.future(b"x", timeout=10) for _ in range(32)]
        # All 32 handlers are inside at the same time: a batch of 32 can form.
        assert all(srv.entered.acquire(timeout=5) for _ in range(32))
        srv.release.set()
        assert [f.result() for f in pending] == [b"x"] * 32


def test_refuses_calls_beyond_its_size_instead_of_queueing_them() -> None:
    with serving(3) as srv:
        pending = [srv.call.future(b"x", timeout=10) for _ in range(3)]
        assert all(srv.entered.acquire(timeout=5) for _ in range(3))
        with pytest.raises(grpc.RpcError) as refused:
            srv.call(b"y", timeout=5)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        srv.release.set()
        assert [f.result() for f in pending] == [b"x"] * 3


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        callback_app(0)


def test_stop_gracefully_finishes_calls_in_flight_and_refuses_new_ones() -> None:
    with serving(4) as srv:
        in_flight = srv.call.future(b"x", timeout=10)
        assert srv.entered.acquire(timeout=5)
        server = srv.app._server
        begun, real_stop = threading.Event(), server.stop

        def stop(grace: float | None) -> threading.Event:
            done: threading.Event = real_stop(grace)
            begun.set()  # shutdown has started: the server takes no new calls
            return done

        server.stop = stop
        outcome: list[bool] = []
        stopper = threading.Thread(target=lambda: outcome.append(stop_gracefully(srv.app, 10)))
        stopper.start()
        assert begun.wait(5)
        with pytest.raises(grpc.RpcError) as refused:
            srv.call(b"y", timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done() and stopper.is_alive()  # waiting for it, not aborting
        srv.release.set()
        assert in_flight.result() == b"x"
        stopper.join(5)
        assert outcome == [True]


def test_stop_gracefully_cancels_what_outlasts_the_grace() -> None:
    with serving(2) as srv:
        in_flight = srv.call.future(b"x", timeout=10)
        assert srv.entered.acquire(timeout=5)
        assert stop_gracefully(srv.app, 0.2) is True  # bounded: the handler never returns
        with pytest.raises(grpc.RpcError) as aborted:
            in_flight.result(timeout=5)
        assert aborted.value.code() is grpc.StatusCode.UNAVAILABLE  # cancelled by the server


def test_the_sdk_internals_relied_on_are_still_there() -> None:
    """``stop_gracefully`` reaches the SDK's private ``App._server`` (the SDK's own
    ``stop()`` has no grace): pin that it is the ``grpc.Server`` we configured, so an SDK
    upgrade that renames it fails here, not at a production shutdown."""
    app = callback_app(3)
    assert isinstance(app._server, grpc.Server)
    assert stop_gracefully(app, 0.1)
