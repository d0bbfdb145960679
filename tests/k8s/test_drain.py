"""The drain that k8s/ configures matches the apps' own grace, the drain the local
rolling-restart test (tests/chaos/test_ha.py) proves: out of the endpoints first
(preStop), daprd stops its subscriptions and keeps serving the app while it finishes
in-flight work within its grace, and the pod's grace period covers all of it."""

from __future__ import annotations

from autoglm.archiver.settings import ArchiverSettings
from autoglm.gateway.__main__ import GRACEFUL_TIMEOUT_S
from autoglm.inference.settings import InferenceSettings
from tests.k8s.manifests import Doc, Rendered, env_of

#: Margin for daprd's own stop after the app is gone, and for the kubelet.
MARGIN_S = 10


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def _app_grace(app: str, container: Doc) -> float:
    """The app's own grace after SIGTERM, as the manifest configures it."""
    env = env_of(container)
    if app == "gateway":
        return float(GRACEFUL_TIMEOUT_S)
    settings = {"inference": InferenceSettings, "archiver": ArchiverSettings}[app]
    default = settings.model_fields["shutdown_grace_s"].default
    return float(env.get(f"AUTOGLM_{app.upper()}_SHUTDOWN_GRACE_S", default))


def test_drain_settings_match_the_apps_grace(rendered: Rendered) -> None:
    for dep in rendered.of_kind("Deployment"):
        app = dep["spec"]["template"]["metadata"]["labels"].get("app")
        if app not in ("gateway", "inference", "archiver"):
            continue
        where = f"{rendered.overlay}/{dep['metadata']['name']}"
        pod = dep["spec"]["template"]["spec"]
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        container = next(c for c in pod["containers"] if c["name"] == app)
        grace = _app_grace(app, container)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        sleep_s = float(pre_stop.get("seconds", 0))
        assert sleep_s >= 3, f"{where}: no preStop sleep to leave the endpoints first"
        block = _seconds(notes.get("dapr.io/block-shutdown-duration", "0"))
        assert block >= sleep_s + grace, (
            f"{where}: daprd stops serving the app ({block}s) before it drained "
            f"({sleep_s}s preStop + {grace}s grace)"
        )
        assert notes.get("dapr.io/enable-app-health-check") == "true", (
            f"{where}: daprd learns that the app left only from its health check"
        )
        assert float(notes.get("dapr.io/graceful-shutdown-seconds", "5")) >= grace, where
        period = pod.get("terminationGracePeriodSeconds", 30)
        assert period >= block + MARGIN_S, (
            f"{where}: terminationGracePeriodSeconds {period} < drain {block}s + {MARGIN_S}s"
        )
