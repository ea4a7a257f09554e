"""Keys at rest: ``hsm.keys.KeyRecord`` rows in the journal's database, shared by every front end.
Rows hold keys only as the HSM encrypted them under the LMK; the newest version of a label is
the one in use, older ones are kept for the audit trail and for messages still in flight (but
for terminals' working keys, which sign-ons renew: only their last few versions are kept)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import NamedTuple

import asyncpg
import msgspec

from actors.settings import ActorKeys, ActorSetup
from hsm import Hsm, HsmError
from hsm.keys import HEX_KINDS, KeyKind, KeyRecord
from switch.config import Config, account_of


class StoredKey(NamedTuple):
    record: KeyRecord
    created_at: dt.datetime


def _stored(row: asyncpg.Record) -> StoredKey:
    record = KeyRecord(
        label=row["label"],
        version=row["version"],
        kind=KeyKind(row["kind"]),
        blob=bytes(row["blob"]),
        check_value=row["check_value"],
    )
    return StoredKey(record, row["created_at"])


class KeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, *records: KeyRecord, keep: int = 0) -> None:
        """Store new versions, all or none; ``asyncpg.UniqueViolationError`` when one exists.
        With ``keep``, only the ``keep`` newest versions of each label stay: the others are deleted."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO hsm_key (label, version, kind, blob, check_value) VALUES ($1, $2, $3, $4, $5)",
                [(r.label, r.version, str(r.kind), r.blob, r.check_value) for r in records],
            )
            if keep:
                await conn.executemany(
                    "DELETE FROM hsm_key WHERE label = $1 AND version <= $2",
                    [(r.label, r.version - keep) for r in records],
                )

    async def note_key_request(self, terminal_id: str, sent_at: dt.datetime, stan: str) -> bool:
        """Record that ``terminal_id`` asked for new keys by a request sent at ``sent_at`` (its
        field 7) with ``stan``; False, recording nothing, unless it comes after the last one
        recorded (later, or in the same second with a later STAN): the same request sent again."""
        return bool(
            await self._pool.fetchval(
                "INSERT INTO terminal_key_request (terminal_id, sent_at, stan) VALUES ($1, $2, $3) "
                "ON CONFLICT (terminal_id) DO UPDATE SET sent_at = EXCLUDED.sent_at, stan = EXCLUDED.stan "
                "WHERE (terminal_key_request.sent_at, terminal_key_request.stan) < (EXCLUDED.sent_at, EXCLUDED.stan) "
                "RETURNING true",
                terminal_id,
                sent_at,
                stan,
            )
        )

    async def newest(self, label: str, count: int = 1) -> list[StoredKey]:
        """The ``count`` newest versions of a label, newest first (empty when there is none)."""
        rows = await self._pool.fetch(
            "SELECT * FROM hsm_key WHERE label = $1 ORDER BY version DESC LIMIT $2", label, count
        )
        return [_stored(row) for row in rows]

    async def current(self, label: str) -> KeyRecord | None:
        found = await self.newest(label)
        return found[0].record if found else None

    async def next_version(self, label: str) -> int:
        return await self._pool.fetchval("SELECT coalesce(max(version), 0) + 1 FROM hsm_key WHERE label = $1", label)

    async def listing(self) -> list[StoredKey]:
        """Every version of every key, by label then version."""
        return [_stored(row) for row in await self._pool.fetch("SELECT * FROM hsm_key ORDER BY label, version")]


async def configured_keys(store: KeyStore, cfg: Config) -> dict[str, KeyRecord]:
    """The newest version of every key the configuration names; ``HsmError`` naming the missing."""
    labels = {cfg.security.pan_hash_key}
    for channel in cfg.channels.values():
        labels |= {*account_of(channel).keys.labels().values(), channel.pin_key} - {""}
    labels |= {m.api_key for m in cfg.merchants} - {""}
    found = {label: await store.current(label) for label in sorted(labels)}
    missing = [label for label, record in found.items() if record is None]
    if missing:
        raise HsmError(f"keys not in the key store: {', '.join(missing)} (import them with `paysw keys import`)")
    return {label: record for label, record in found.items() if record is not None}


def actor_setup(config: Config, channel: str, keys: dict[str, KeyRecord]) -> ActorSetup:
    """What channel ``channel``'s actors (or a worker outside Ray) are given: its actor settings,
    the account, the HSM to open and the account's key records among ``keys`` (``configured_keys``)."""
    section = config.channels[channel]
    account = account_of(section)
    labels = account.keys.labels()
    records = ActorKeys(
        hsm=config.security.hsm,
        base_dir=config.base_dir,
        demo=config.switch.demo,
        sign=keys[labels["sign"]],
        verify=keys[labels["verify"]],
        seal=keys[labels["seal"]] if "seal" in labels else None,
    )
    return ActorSetup(kind=section.kind, settings=section.actor, account=account, keys=records)


class ManifestEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: KeyKind
    file: str  # relative to the manifest; DES keys as hex, other keys as they come (PEM, hex, text)


def read_manifest(path: Path) -> dict[str, ManifestEntry]:
    """``[keys."LABEL"]`` tables with a kind and a file."""
    try:
        return msgspec.toml.decode(path.read_bytes(), type=dict[str, dict[str, ManifestEntry]]).get("keys", {})
    except OSError as exc:
        raise HsmError(f"cannot read key manifest {path}: {exc.strerror}") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HsmError(f"key manifest {path}: {exc}") from None


def material_of(kind: KeyKind, path: Path) -> bytes:
    """A key file's material: DES and SM4 keys are written as hex, everything else is taken as it is."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HsmError(f"cannot read key file {path}: {exc.strerror}") from None
    if kind in HEX_KINDS:
        try:
            return bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise HsmError(f"key file {path}: a {kind} key is written as 32 hex characters") from None
    return raw


async def provision(store: KeyStore, hsm: Hsm, manifest: Path) -> list[str]:
    """Import every key of the manifest whose label the store does not have yet (then the files
    can be deleted: a label already stored is never read again). Returns the labels imported."""
    imported = []
    for label, entry in read_manifest(manifest).items():
        if await store.current(label) is not None:
            continue
        record = hsm.import_key(label, entry.kind, material_of(entry.kind, manifest.parent / entry.file))
        try:
            await store.add(record)
        except asyncpg.UniqueViolationError:  # another front end provisioned it meanwhile
            continue
        imported.append(label)
    return imported
