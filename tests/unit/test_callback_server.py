"""The app's gRPC callback server takes as many calls at once as it is sized for, and
stops without aborting the calls in flight."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest
from dapr.clients.grpc.interceptors import DaprClientInterceptor
from dapr.ext.grpc import App

from autoglm.core.callback_server import callback_app, caller_app_id, stop_gracefully

SERVICE, METHOD = "test.Blocking", "Wait"


@dataclass
class Blocking:
    app: App
    call: grpc.UnaryUnaryMultiCallable
    entered: threading.Semaphore
    release: threading.Event


TOKEN = "app-token"


@contextmanager
def serving(size: int, token: str | None = TOKEN) -> Iterator[Blocking]:
    """A callback app of ``size`` calls whose one method blocks until released; every
    call carries the app token ``token`` (as daprd's would)."""
    app = callback_app(size, app_token=TOKEN)
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
    if token is not None:
        sends = DaprClientInterceptor([("dapr-api-token", token)])
        channel = grpc.intercept_channel(channel, sends)
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


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_refuses_calls_without_the_app_token(token: str | None) -> None:
    """A local process that reaches the app's port directly, not through daprd, gets
    nothing: no method, no topic delivery runs."""
    with serving(2, token=token) as srv:
        with pytest.raises(grpc.RpcError) as refused:
            srv.call(b"x", timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert not srv.entered.acquire(timeout=0.2)  # the handler never ran


def test_an_app_without_a_configured_token_refuses_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APP_API_TOKEN", raising=False)
    app = callback_app(2)
    port = app._server.add_insecure_port("127.0.0.1:0")
    app._server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            sends = DaprClientInterceptor([("dapr-api-token", "")])
            call = grpc.intercept_channel(channel, sends).unary_unary(
                "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent"
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        app._server.stop(grace=None)


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
        # gRPC core refuses a stream that reaches the server after its GOAWAY with
        # UNAVAILABLE and one that got there just before it with CANCELLED (seen on a
        # loaded machine); either way the handler never ran (it would have entered before
        # the call ended).
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not srv.entered.acquire(blocking=False)
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


@pytest.mark.parametrize(
    ("metadata", "caller"),
    [
        ({"dapr-caller-app-id": ["gateway"]}, "gateway"),
        ({"dapr-caller-app-id": ["gateway", "gateway"]}, "gateway"),
        # A header the caller added travels next to the one daprd set: no identity.
        ({"dapr-caller-app-id": ["archiver", "gateway"]}, None),
        ({"dapr-caller-app-id": ["gateway", "archiver"]}, None),
        ({}, None),
        (None, None),
    ],
)
def test_caller_identity_is_daprds_alone(metadata: object, caller: str | None) -> None:
    assert caller_app_id(metadata) == caller
