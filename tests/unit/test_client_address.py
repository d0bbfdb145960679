"""The client address behind a trusted proxy is the one that proxy added, never one the
client wrote into ``X-Forwarded-For`` itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from autoglm.devstack.frontdoor import GATEWAY_ENV, Backend, render_config
from autoglm.gateway.audit import client_ip

pytestmark = pytest.mark.unit

FORGED = {"X-Forwarded-For": "6.6.6.6, 10.1.2.3"}  # client wrote 6.6.6.6; proxy added 10.1.2.3


def test_behind_a_trusted_proxy_the_last_entry_counts() -> None:
    with Flask(__name__).test_request_context(
        "/", headers=FORGED, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    ):
        assert client_ip(trust_forwarded=True) == "10.1.2.3"


def test_without_trust_the_header_is_ignored() -> None:
    with Flask(__name__).test_request_context(
        "/", headers=FORGED, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    ):
        assert client_ip(trust_forwarded=False) == "192.0.2.7"


def test_the_front_door_appends_the_client_address_and_its_gateways_trust_it(
    tmp_path: Path,
) -> None:
    cfg = render_config(8080, [Backend("gateway-0", 18080)], tmp_path).read_text()
    assert "option forwardfor" in cfg
    assert GATEWAY_ENV["AUTOGLM_GATEWAY_TRUST_FORWARDED_FOR"] == "true"
