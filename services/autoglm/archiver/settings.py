"""Settings of the archiver app (env prefix ``AUTOGLM_ARCHIVER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from autoglm.core.settings import AppSettings


class ArchiverSettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_ARCHIVER_"

    host: str = "127.0.0.1"
    port: int = Field(default=50052, ge=1, le=65535)
    root: Path = Path(".data/archive")
