"""The durable journal: PostgreSQL through asyncpg."""

from switch.journal.store import FinalUpdate, Journal, NewTxn, OpenTxn, Original, StoredTxn, TxnKey

__all__ = ["FinalUpdate", "Journal", "NewTxn", "OpenTxn", "Original", "StoredTxn", "TxnKey"]
