"""Where things live under the archive root, with every name checked before it is used.

Ids and names come from the network; a path is built only from components that cannot
climb out of their directory, and the result is checked to be inside the root.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import is_safe_id


def component(value: str, param: str) -> str:
    """``value`` if it is one safe path component: a ``SafeId`` (no separator, no
    leading dot)."""
    if not is_safe_id(value):
        raise InvalidRequestError(f"'{param}' is not a valid id: {value!r}", param=param)
    return value


def shard(tenant: str) -> str:
    """Two hex digits spreading tenants over 256 directories."""
    return hashlib.md5(tenant.encode(), usedforsecurity=False).hexdigest()[:2]


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` after checking each part, guaranteed to stay under ``root``."""
    path = root.joinpath(*(component(p, "path") for p in parts))
    if not path.resolve().is_relative_to(root.resolve()):
        raise InvalidRequestError("path escapes the archive root", param="path")
    return path


#: Sessions whose directories are remembered (every event and snapshot of a session
#: needs it; checking it resolves each component with a system call).
_SESSION_DIRS = 65536


@lru_cache(maxsize=_SESSION_DIRS)
def session_dir(root: Path, tenant: str, session_id: str) -> Path:
    """``{root}/sessions/{md5(tenant)[:2]}/{tenant}/{session}``. Remembered per session:
    the ids are checked components either way, and the archive root is the archiver's
    own (nothing else creates links inside it)."""
    component(session_id, "session_id")
    return inside(root / "sessions", shard(component(tenant, "tenant")), tenant, session_id)


@lru_cache(maxsize=4096)
def tenant_file(root: Path, tenant: str, name: str) -> Path:
    """``{root}/{tenant}/{name}`` (an audit day's file), remembered like ``session_dir``."""
    return inside(root, tenant, name)


def attachment_dir(root: Path, category: str, tenant: str, attachment_id: str) -> Path:
    """``{root}/attachments/{category}/{md5(tenant)[:2]}/{tenant}/{id}``."""
    component(attachment_id, "id")
    return inside(
        root / "attachments",
        category,
        shard(component(tenant, "tenant")),
        tenant,
        attachment_id,
    )
