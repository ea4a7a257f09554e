"""The embedded default: a real PostgreSQL from the ``pgserver`` package under a data folder,
reached over a unix socket. Used when no database URL is configured."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("paysw.journal")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server = None
        self.url = ""  # its superuser's, once started

    def start(self) -> str:
        """Start (or join) the server and return its connection URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import pgserver

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        url = self.url = self._server.get_uri()
        log.info("embedded PostgreSQL running", extra={"data_dir": str(self.data_dir)})
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
