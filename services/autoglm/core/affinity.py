"""Session affinity through Dapr actors: the actor type inference hosts, and the id of
a session's actor.

A chat session's turns are invoked on the actor ``InferenceSession/<id>``; Dapr's
placement service keeps each actor id on one inference replica, so the turns reach the
replica whose prefix cache holds the session's earlier prompt. The id is a hash of the
tenant and session id: no tenant name or user-chosen text travels in actor ids (they
appear in daprd logs, metrics and placement tables), and two tenants' equal session ids
never share an actor.
"""

from __future__ import annotations

import hashlib

ACTOR_TYPE = "InferenceSession"
#: The actor state store component (``actorStateStore: "true"``), scoped to the host.
ACTORSTORE = "actorstore"
#: Actor methods; each has the request and reply models of the inference method of the
#: same name in the contract table (``autoglm.core.contracts``).
ACTOR_METHODS = ("generate",)


def session_actor_id(tenant: str, session_id: str) -> str:
    """The actor id of ``tenant``'s session ``session_id`` (hex, URL-safe)."""
    digest = hashlib.sha256(f"{tenant}\x00{session_id}".encode()).hexdigest()
    return digest[:32]
