"""The durable journal: PostgreSQL through asyncpg, and the one state machine that moves its
transactions (``switch.journal.machine``)."""

from switch.journal.machine import Event, State
from switch.journal.store import (
    Journal,
    NewTxn,
    OpenTxn,
    Original,
    Report,
    StoredTxn,
    TxnKey,
    hand_to_resolver,
    record_in,
    resolve_dead_letter,
    retry_dead_letter,
)

__all__ = [
    "Event",
    "Journal",
    "NewTxn",
    "OpenTxn",
    "Original",
    "Report",
    "State",
    "StoredTxn",
    "TxnKey",
    "hand_to_resolver",
    "record_in",
    "resolve_dead_letter",
    "retry_dead_letter",
]
