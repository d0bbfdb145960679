"""Where the dev tooling finds the repository's binaries, components and data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The checkout (services/autoglm/devstack/layout.py -> repo root).
REPO_ROOT = Path(os.environ.get("AUTOGLM_REPO_ROOT", Path(__file__).resolve().parents[3]))
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
COMPONENTS_DIR = REPO_ROOT / "components"
MODELS_DIR = REPO_ROOT / ".models"
DATA_DIR = REPO_ROOT / ".data"


def tool(name: str) -> Path:
    """Path of a binary we build into ``.tools/bin`` (or, for Debian's, on PATH)."""
    built = TOOLS_BIN / name
    if built.is_file():
        return built
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(f"{name} not found in {TOOLS_BIN} or on PATH; run 'make tools'")
