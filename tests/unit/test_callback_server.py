"""The app's gRPC callback server takes as many calls at once as it is sized for."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest

from autoglm.core.callback_server import callback_app

SERVICE, METHOD = "test.Blocking", "Wait"


@dataclass
class Blocking:
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
        yield Blocking(channel.unary_unary(f"/{SERVICE}/{METHOD}"), entered, release)
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
