from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.archiver.settings import ArchiverSettings
from autoglm.core.settings import SettingsError, load_settings
from autoglm.gateway.settings import GatewaySettings
from autoglm.inference.settings import InferenceSettings


def test_env_overrides_defaults_with_typed_values() -> None:
    s = load_settings(
        GatewaySettings, {"AUTOGLM_GATEWAY_PORT": "9000", "AUTOGLM_GATEWAY_HEADER_TIMEOUT_S": "4"}
    )
    assert s.port == 9000 and s.header_timeout_s == 4


def test_yaml_section_then_env_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "autoglm.yaml"
    cfg.write_text("archiver:\n  port: 6000\n  root: /srv/archive\ngateway:\n  port: 1\n")
    s = load_settings(
        ArchiverSettings, {"AUTOGLM_CONFIG": str(cfg), "AUTOGLM_ARCHIVER_PORT": "6001"}
    )
    assert s.port == 6001
    assert s.root == Path("/srv/archive")


def test_invalid_value_names_the_setting_and_env_var() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(GatewaySettings, {"AUTOGLM_GATEWAY_PORT": "70000"})
    assert "port (AUTOGLM_GATEWAY_PORT)" in str(err.value)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(SettingsError, match="prot"):
        load_settings(GatewaySettings, {"AUTOGLM_GATEWAY_PROT": "1"})


def test_missing_model_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            InferenceSettings, {"AUTOGLM_INFERENCE_MODELS": f"[{{id: x, path: {tmp_path}}}]"}
        )
    assert "models.0.path" in str(err.value) and "autoglm models init-demo" in str(err.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUTOGLM_CONFIG"):
        load_settings(GatewaySettings, {"AUTOGLM_CONFIG": str(tmp_path / "nope.yaml")})


def test_the_former_thread_count_is_accepted_and_ignored() -> None:
    """Configurations written for the gthread server still start (gevent has no pool)."""
    s = load_settings(GatewaySettings, {"AUTOGLM_GATEWAY_THREADS": "8"})
    assert s.threads == 8 and s.worker_connections == 1000
