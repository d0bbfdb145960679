"""What a test can see of the archiver's disk without going through the archiver."""

from __future__ import annotations

from pathlib import Path


def has_version(root: Path, tenant: str, session_id: str, version: int) -> bool:
    """The archiver under ``root`` has taken ``version`` of the session: staged (the
    staging log's record headers are plain JSON) or already a snapshot version. Events
    reach it some time after they were published (the gateway's bulk linger, daprd's
    bulk window), so tests that need one there wait for this."""
    staged = f'"tenant":"{tenant}","session_id":"{session_id}","version":{version},'.encode()
    if any(staged in log.read_bytes() for log in (root / "staging").glob("*.log")):
        return True
    return any(root.rglob(f"sessions/*/{tenant}/{session_id}/{version:08d}/context.bin"))
