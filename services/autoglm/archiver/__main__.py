"""``python -m autoglm.archiver``: serve snapshot and audit subscriptions over gRPC."""

from __future__ import annotations

import logging
import sys

from autoglm.archiver.app import build_app
from autoglm.archiver.archive import Archive
from autoglm.archiver.serving import ArchiverService
from autoglm.archiver.settings import ArchiverSettings
from autoglm.core.lifecycle import on_shutdown
from autoglm.core.logging import configure_logging
from autoglm.core.settings import SettingsError, load_settings

log = logging.getLogger("autoglm.archiver")


def main() -> int:
    configure_logging("archiver")
    try:
        settings = load_settings(ArchiverSettings)
    except SettingsError as exc:
        log.error(str(exc))
        return 2
    configure_logging("archiver", settings.log_level)
    settings.root.mkdir(parents=True, exist_ok=True)
    app = build_app(ArchiverService(Archive(settings.root)))
    on_shutdown(app.stop)
    log.info("archiver listening", extra={"port": settings.port, "root": str(settings.root)})
    app.run(settings.port, listen_address=settings.host)
    log.info("archiver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
