"""Every call between the apps, declared once: who serves it, who may call or publish it.

This table is the single source of the mesh's access lists. The Dapr access control of
each app (Configuration ``accessControl``), the pub/sub component's
``publishingScopes`` / ``subscriptionScopes`` / ``allowedTopics``, the secret scopes, and
in ``k8s/`` the Istio AuthorizationPolicies and NetworkPolicies are all derived from it
(``autoglm.devstack`` renders the local ones; ``tests/k8s`` checks that the cluster's
allow exactly this set, and ``tests/unit`` that ``components/`` does). A new method or
topic is added here first; an app that calls something not listed here is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from autoglm.core import affinity
from autoglm.core import archive_protocol as archive
from autoglm.core.errors import InternalError
from autoglm.core.schemas import (
    AUDIT_TOPIC,
    REQUESTS_TOPIC,
    RESULTS_TOPIC,
    SECRETSTORE,
    SNAPSHOTS_TOPIC,
    AuditEvent,
    CancelReply,
    CancelRequest,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    InferenceRequestEvent,
    InferenceResultEvent,
    ModelRef,
    ModelsReply,
    ModelState,
    SnapshotEvent,
)
from autoglm.core.sidecar import SidecarAPI
from autoglm.core.streaming import STREAM_METHOD, STREAM_SERVICE

Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)
Ev = TypeVar("Ev", bound=BaseModel)

GATEWAY, INFERENCE, ARCHIVER = "gateway", "inference", "archiver"
APPS = (GATEWAY, INFERENCE, ARCHIVER)
#: Namespace and trust domain of the apps' SPIFFE ids, locally as in ``k8s/``.
NAMESPACE = "autoglm"
TRUST_DOMAIN = "public"
#: Port of daprd's internal gRPC API (daprd-to-daprd calls) in Kubernetes.
DAPR_INTERNAL_PORT = 50002


@dataclass(frozen=True)
class Rpc(Generic[Req, Rep]):
    """A service-invocation method (or a gRPC method proxied by daprd) of ``app``:
    ``request`` is its body (None: it takes none), ``reply`` what it answers."""

    name: str
    app: str
    request: type[Req] | None
    reply: type[Rep] | None
    callers: frozenset[str]

    @property
    def operation(self) -> str:
        """The operation name Dapr's access control matches (``/method``)."""
        return self.name if self.name.startswith("/") else f"/{self.name}"


@dataclass(frozen=True)
class Topic(Generic[Ev]):
    name: str
    event: type[Ev]
    publishers: frozenset[str]
    subscribers: frozenset[str]

    @property
    def dead_letter(self) -> str:
        """Where the subscriber's daprd moves what it cannot deliver."""
        return f"{self.name}.deadletter"


def _rpc(
    name: str,
    app: str,
    request: type[Req] | None,
    reply: type[Rep] | None,
    *callers: str,
) -> Rpc[Req, Rep]:
    return Rpc(name, app, request, reply, frozenset(callers))


def _topic(name: str, event: type[Ev], publishers: Iterable[str], *subs: str) -> Topic[Ev]:
    return Topic(name, event, frozenset(publishers), frozenset(subs))


#: Inference's model administration; only these callers pass its admin check too.
ADMIN_METHODS = ("load_model", "unload_model")
GENERATE_STREAM = f"/{STREAM_SERVICE}/{STREAM_METHOD}"

GENERATE: Rpc[GenerateRequest, GenerateResult] = _rpc(
    "generate", INFERENCE, GenerateRequest, GenerateResult, GATEWAY
)
#: Cancels a request sent through inference.requests (the Responses API's cancel).
CANCEL: Rpc[CancelRequest, CancelReply] = _rpc(
    "cancel", INFERENCE, CancelRequest, CancelReply, GATEWAY
)
STREAM: Rpc[GenerateRequest, GenerateResult] = _rpc(
    GENERATE_STREAM, INFERENCE, GenerateRequest, GenerateResult, GATEWAY
)
EMBED: Rpc[EmbedRequest, EmbedResult] = _rpc("embed", INFERENCE, EmbedRequest, EmbedResult, GATEWAY)
MODELS: Rpc[BaseModel, ModelsReply] = _rpc("models", INFERENCE, None, ModelsReply, GATEWAY)
LOAD_MODEL: Rpc[ModelRef, ModelState] = _rpc("load_model", INFERENCE, ModelRef, ModelState, GATEWAY)
UNLOAD_MODEL: Rpc[ModelRef, ModelState] = _rpc(
    "unload_model", INFERENCE, ModelRef, ModelState, GATEWAY
)
#: Inference's readiness probe in k8s/ invokes its own ``health`` through its daprd
#: (the app id may resolve to a sibling replica).
INFERENCE_HEALTH: Rpc[BaseModel, BaseModel] = _rpc("health", INFERENCE, None, None, INFERENCE)
RESTORE: Rpc[archive.RestoreRequest, archive.RestoreReply] = _rpc(
    archive.RESTORE, ARCHIVER, archive.RestoreRequest, archive.RestoreReply, GATEWAY
)
ATTACHMENT_START: Rpc[archive.AttachmentStartRequest, archive.AttachmentInfo] = _rpc(
    archive.ATTACHMENT_START,
    ARCHIVER,
    archive.AttachmentStartRequest,
    archive.AttachmentInfo,
    GATEWAY,
)
ATTACHMENT_PUT: Rpc[archive.AttachmentPutRequest, archive.AttachmentPutReply] = _rpc(
    archive.ATTACHMENT_PUT,
    ARCHIVER,
    archive.AttachmentPutRequest,
    archive.AttachmentPutReply,
    GATEWAY,
)
ATTACHMENT_GET: Rpc[archive.AttachmentGetRequest, archive.AttachmentGetReply] = _rpc(
    archive.ATTACHMENT_GET,
    ARCHIVER,
    archive.AttachmentGetRequest,
    archive.AttachmentGetReply,
    GATEWAY,
)
AUDIT_QUERY: Rpc[archive.AuditQueryRequest, archive.AuditQueryReply] = _rpc(
    archive.AUDIT_QUERY,
    ARCHIVER,
    archive.AuditQueryRequest,
    archive.AuditQueryReply,
    GATEWAY,
)
#: Served for operators and tests through a daprd of their own; no app calls it.
ARCHIVER_HEALTH: Rpc[BaseModel, archive.HealthReply] = _rpc(
    archive.HEALTH, ARCHIVER, None, archive.HealthReply
)

RPCS: tuple[Rpc[Any, Any], ...] = (
    GENERATE,
    CANCEL,
    STREAM,
    EMBED,
    MODELS,
    LOAD_MODEL,
    UNLOAD_MODEL,
    INFERENCE_HEALTH,
    RESTORE,
    ATTACHMENT_START,
    ATTACHMENT_PUT,
    ATTACHMENT_GET,
    AUDIT_QUERY,
    ARCHIVER_HEALTH,
)

INFERENCE_REQUESTS = _topic(REQUESTS_TOPIC, InferenceRequestEvent, [GATEWAY], INFERENCE)
INFERENCE_RESULTS = _topic(RESULTS_TOPIC, InferenceResultEvent, [INFERENCE], GATEWAY)
SESSION_SNAPSHOTS = _topic(SNAPSHOTS_TOPIC, SnapshotEvent, [GATEWAY], ARCHIVER)
AUDIT_EVENTS = _topic(AUDIT_TOPIC, AuditEvent, [GATEWAY], ARCHIVER)
TOPICS: tuple[Topic[Any], ...] = (
    INFERENCE_REQUESTS,
    INFERENCE_RESULTS,
    SESSION_SNAPSHOTS,
    AUDIT_EVENTS,
)

#: Which secrets (in the ``vault`` store) each app reads; the defaults of its settings.
SECRETS: Mapping[str, tuple[str, ...]] = {
    GATEWAY: ("jwt", "api-keys"),
    INFERENCE: ("model-signing",),
    ARCHIVER: ("archive",),
}


@dataclass(frozen=True)
class ActorType:
    """A Dapr actor type ``app`` hosts; ``methods`` have the request and reply models of
    ``app``'s service-invocation methods of the same names."""

    name: str
    app: str
    methods: tuple[str, ...]
    callers: frozenset[str]


#: Dapr's ``accessControl`` does not apply to actor calls (only to service invocation),
#: so only the apps named here get an actor runtime (the placement service) at all.
ACTORS: tuple[ActorType, ...] = (
    ActorType(affinity.ACTOR_TYPE, INFERENCE, affinity.ACTOR_METHODS, frozenset({GATEWAY})),
)


def actor_apps() -> set[str]:
    """Apps whose daprd needs the actor runtime: hosts and callers of an actor type."""
    return {a.app for a in ACTORS} | {c for a in ACTORS for c in a.callers}


def rpc(app: str, name: str) -> Rpc[Any, Any]:
    """The declaration of ``app``'s method ``name`` (KeyError if there is none)."""
    for r in RPCS:
        if r.app == app and r.name == name:
            return r
    raise KeyError(f"{app} declares no method {name!r}")


def topic(name: str) -> Topic[Any]:
    for t in TOPICS:
        if t.name == name:
            return t
    raise KeyError(f"no topic {name!r} in the contract table")


@dataclass
class MeshClient:
    """Calls other apps' methods through the local daprd, typed by this table:
    ``client.call(RESTORE, RestoreRequest(...))`` sends the request model and returns
    the reply model. ``app_ids`` maps an app to the Dapr id it runs under when that is
    configured otherwise (a canary); failures come back as ``AutoGLMError`` subclasses
    (``SidecarAPI.invoke_model``), a reply that does not fit its model as ``InternalError``."""

    sidecar: SidecarAPI
    app_ids: Mapping[str, str] = field(default_factory=dict)

    def call(
        self, method: Rpc[Req, Rep], request: Req | None = None, *, timeout: float = 60.0
    ) -> Rep:
        if (request is None) != (method.request is None) or (
            request is not None and not isinstance(request, method.request or ())
        ):
            raise TypeError(f"{method.name} takes {method.request!r}, not {type(request)!r}")
        if method.reply is None:
            raise TypeError(f"{method.name} declares no reply; nobody calls it through here")
        app_id = self.app_ids.get(method.app, method.app)
        try:
            return self.sidecar.invoke_model(
                app_id, method.name, request, method.reply, timeout=timeout
            )
        except ValidationError as exc:
            raise InternalError(
                f"malformed reply from {method.app}.{method.name}: {exc.error_count()} errors"
            ) from None

    def publish(self, topic: Topic[Ev], event: Ev, *, soon: bool = False) -> None:
        """Publish ``event``, the model the table declares for ``topic``: now (returns
        once the broker accepted it), or with ``soon`` just after the caller has moved on
        (``SidecarAPI.publish_soon``: errors logged, never raised)."""
        if not isinstance(event, topic.event):
            raise TypeError(f"{topic.name} carries {topic.event!r}, not {type(event)!r}")
        publish = self.sidecar.publish_soon if soon else self.sidecar.publish
        publish(topic.name, event.model_dump(mode="json"))


# -- derived sets ----------------------------------------------------------------------
def invocations() -> set[tuple[str, str, str]]:
    """Every allowed call: (caller app, callee app, operation)."""
    return {(c, r.app, r.operation) for r in RPCS for c in r.callers}


def app_flows() -> set[tuple[str, str]]:
    """(caller, callee) pairs that need a network path between their daprd."""
    return {(caller, callee) for caller, callee, _ in invocations()}


def publications() -> set[tuple[str, str]]:
    """(app, topic) pairs an app's daprd may publish to: its topics, and the dead-letter
    topics of its subscriptions (daprd moves undeliverable messages there for it)."""
    pubs = {(a, t.name) for t in TOPICS for a in t.publishers}
    return pubs | {(a, t.dead_letter) for t in TOPICS for a in t.subscribers}


def subscriptions() -> set[tuple[str, str]]:
    return {(a, t.name) for t in TOPICS for a in t.subscribers}


# -- Dapr resources ------------------------------------------------------------------
def access_control(callee: str, app_id: str | None = None) -> dict[str, Any]:
    """The ``accessControl`` of the Configuration used by ``callee``'s daprd: deny by
    default; each caller may use exactly the operations declared for it. ``app_id``:
    the Dapr id the callee runs under when it is not its own (a canary), which its
    own calls to itself come from."""
    policies = []
    for caller in APPS:
        ops = sorted(op for c, a, op in invocations() if c == caller and a == callee)
        if ops:
            policies.append(
                {
                    "appId": app_id if app_id and caller == callee else caller,
                    "namespace": NAMESPACE,
                    "trustDomain": TRUST_DOMAIN,
                    "defaultAction": "deny",
                    "operations": [
                        {"name": op, "httpVerb": ["*"], "action": "allow"} for op in ops
                    ],
                }
            )
    return {"defaultAction": "deny", "trustDomain": TRUST_DOMAIN, "policies": policies}


def secret_scopes(app: str) -> list[dict[str, Any]]:
    """The ``secrets.scopes`` of ``app``'s Configuration: only its own Vault secrets;
    nothing from the Kubernetes store (that serves components' secretKeyRefs only)."""
    return [
        {"storeName": "kubernetes", "defaultAccess": "deny"},
        {
            "storeName": SECRETSTORE,
            "defaultAccess": "deny",
            "allowedSecrets": list(SECRETS.get(app, ())),
        },
    ]


def _scope_list(pairs: set[tuple[str, str]]) -> str:
    """Dapr's ``app1=topic1,topic2;app2=`` form; every app listed, so one with no topics
    gets none (an app left out would get every allowed topic)."""
    return ";".join(f"{a}={','.join(sorted(t for x, t in pairs if x == a))}" for a in APPS)


def pubsub_scopes() -> dict[str, str]:
    """Metadata of the ``pubsub`` component that limits topics, publishers, subscribers."""
    topics = {t for _, t in publications()} | {t for _, t in subscriptions()}
    return {
        "allowedTopics": ",".join(sorted(topics)),
        "publishingScopes": _scope_list(publications()),
        "subscriptionScopes": _scope_list(subscriptions()),
    }
