"""A benchmark's database: ``SWITCH_DATABASE_URL`` if set (it must be empty of the benchmark's
rows), else a fresh embedded PostgreSQL in a scratch folder, stopped and removed afterwards."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from switch.journal.embedded import EmbeddedPostgres


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[tuple[str, Path]]:
    """The database's URL, and a scratch folder for the benchmark's files."""
    url = os.environ.get("SWITCH_DATABASE_URL", "")
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        embedded = None
        if not url:
            embedded = EmbeddedPostgres(Path(folder) / "pg")
            url = embedded.start()
        try:
            yield url, Path(folder)
        finally:
            if embedded is not None:
                embedded.stop()
