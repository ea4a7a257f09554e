"""``paysw keys``: the key custodians' commands. Keys go in as files and come out only as check
values (or, for a generated SM2 key, its public key to give the channel); the store holds them
encrypted under the LMK."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import asyncpg

from hsm import Hsm, HsmError, KeyKind, open_hsm
from hsm.settings import token_pin
from switch.cli_support import add_database_arguments, with_database
from switch.config import Config
from switch.journal.schema import migrate
from switch.keystore import KeyStore, material_of, provision

GENERATED = (KeyKind.MAK, KeyKind.PIK, KeyKind.ZPK, KeyKind.DEK, KeyKind.SECRET, KeyKind.PRIVATE)


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser(
        "keys",
        help="create the LMK; import, generate, rotate and list keys",
        description="Keys at rest are encrypted under the LMK (a file for the software HSM, a key "
        "inside the token for PKCS#11) in the journal database. Listings show check values, never keys.",
    )
    keys.add_argument(
        "action", choices=["new-lmk", "list", "import", "generate", "rotate", "link-certs"], help="what to do"
    )
    add_database_arguments(keys)
    keys.add_argument("--label", help="the key's label, e.g. tmk:T0000001, zpk:unionpay, wechat:api-key")
    keys.add_argument("--kind", choices=[k.value for k in KeyKind], help="import / generate: the kind of key")
    keys.add_argument(
        "--file", type=Path, help="import: the clear key (DES keys in hex); the file may be deleted afterwards"
    )
    keys.add_argument("--manifest", type=Path, help="import: every key of a manifest whose label is not stored yet")
    keys.add_argument(
        "--out",
        type=Path,
        help="link-certs: a new folder for a CA of the links' own and the one certificate every node shows "
        "(copy the folder to each node; the CA's key is not kept)",
    )
    keys.add_argument("--days", type=int, default=365, help="link-certs: how long they are valid (default 365)")


def main(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.action == "new-lmk":
            return _new_lmk(config)
        if args.action == "link-certs":
            return _link_certs(_required(args, "out"), args.days)
        hsm = open_hsm(config.security.hsm, config.base_dir, demo=config.switch.demo)
        return with_database(
            config, args.data_dir, lambda url: _with_store(url, lambda store: _ACTIONS[args.action](args, store, hsm))
        )
    except HsmError as exc:
        print(f"paysw keys: {exc}", file=sys.stderr)
        return 2


def _link_certs(out: Path, days: int) -> int:
    """The TLS material of the links to channel actors (``actors.link_pki``)."""
    from actors.link_pki import make_pki

    if out.exists():
        print(f"paysw keys link-certs: {out} exists; give a new folder", file=sys.stderr)
        return 2
    if not 1 <= days <= 3650:
        print(f"paysw keys link-certs: --days: expected 1 to 3650, not {days}", file=sys.stderr)
        return 2
    tls = make_pki(out, "paysw links CA", ("link",), days)["link"]
    print(
        f"link certificates in {out}, valid {days} days; on every node and in [ray]:\n"
        f'link_tls_cert = "{tls.cert}"\nlink_tls_key = "{tls.key}"\nlink_tls_ca = "{tls.ca}"'
    )
    return 0


async def _with_store(url: str, action) -> int:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        return await action(KeyStore(pool))
    finally:
        await pool.close()


def _new_lmk(config: Config) -> int:
    settings = config.security.hsm
    if settings.backend == "pkcs11":
        from hsm.pkcs11 import Pkcs11Hsm

        pin = token_pin(settings, config.base_dir, demo=config.switch.demo)
        Pkcs11Hsm.create_lmk(settings.pkcs11_library, settings.token_label, pin)
        print(f"LMK created inside token {settings.token_label!r}; it cannot be read out")
        return 0
    path = Path(config.base_dir) / settings.lmk_file
    if path.exists():
        raise HsmError(f"{path} exists: a new LMK would leave every stored key unreadable")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(32).hex().upper() + "\n")
    print(f"LMK written to {path} (mode 600); keep a copy with the key custodians")
    return 0


async def _list(_: argparse.Namespace, store: KeyStore, __: Hsm) -> int:
    rows = await store.listing()
    print(f"{'label':<32} {'version':>7}  {'kind':<8} {'check value':<11}  created")
    for stored in rows:
        r = stored.record
        print(f"{r.label:<32} {r.version:>7}  {r.kind:<8} {r.check_value:<11}  {stored.created_at:%Y-%m-%d %H:%M:%S}")
    print(f"{len(rows)} key versions")
    return 0


async def _import(args: argparse.Namespace, store: KeyStore, hsm: Hsm) -> int:
    if args.manifest:
        imported = await provision(store, hsm, args.manifest)
        print(f"imported {len(imported)} keys: {', '.join(imported) or 'none (all labels already stored)'}")
        return 0
    label, kind = _required(args, "label"), KeyKind(_required(args, "kind"))
    record = hsm.import_key(label, kind, material_of(kind, _required(args, "file")), await store.next_version(label))
    await store.add(record)
    print(f"{label} v{record.version} ({kind}) imported, check value {record.check_value}")
    return 0


async def _generate(args: argparse.Namespace, store: KeyStore, hsm: Hsm) -> int:
    label, kind = _required(args, "label"), KeyKind(_required(args, "kind"))
    return await _store_new(store, hsm, label, kind)


async def _rotate(args: argparse.Namespace, store: KeyStore, hsm: Hsm) -> int:
    label = _required(args, "label")
    current = await store.current(label)
    if current is None:
        raise HsmError(f"no key {label!r} to rotate")
    print(f"{label} v{current.version}: check value {current.check_value} (kept for the audit trail)")
    return await _store_new(store, hsm, label, current.kind)


async def _store_new(store: KeyStore, hsm: Hsm, label: str, kind: KeyKind) -> int:
    if kind not in GENERATED:
        raise HsmError(f"a {kind} key comes from outside (terminal master keys, channels' public keys): import it")
    record = hsm.generate(label, kind, await store.next_version(label))
    await store.add(record)
    print(f"{label} v{record.version} ({kind}) generated, check value {record.check_value}")
    if kind is KeyKind.PRIVATE:
        print(f"SM2 public key for the channel: {hsm.public_key(record)}")
    return 0


def _required(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    if not value:
        raise HsmError(f"{args.action} needs --{name}")
    return value


_ACTIONS = {"list": _list, "import": _import, "generate": _generate, "rotate": _rotate}
