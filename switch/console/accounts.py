"""Console accounts, their passwords and sessions, and the limit on failed sign-ins.

Passwords are kept under scrypt (RFC 7914; N = 2**15, r = 8, p = 1, a 16-byte salt: about 0.1 s
and 32 MiB a check), as ``scrypt$N$r$p$salt$hash``. A session is a random token in an HttpOnly
cookie; the journal keeps only its SHA-256, with its CSRF token and its expiry (idle and
absolute). Failed sign-ins are kept for the window and counted per account and per address."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
from typing import Literal, NamedTuple

import asyncpg

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return "$".join(("scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)))


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        given = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM)
    except ValueError:
        return False
    return hmac.compare_digest(given, _unb64(digest))


@functools.cache
def _nobody() -> str:
    """Checked against when the account does not exist: a wrong name costs what a wrong password does."""
    return hash_password(secrets.token_urlsafe(16))


class Account(NamedTuple):
    name: str
    role: Role


class Session(NamedTuple):
    account: Account
    csrf: str
    expires_at: dt.datetime


# A new account's name: letters, digits, dot, dash, underscore, as the provenance of an approved
# change (console:ada+alan) and the audit join names without ambiguity.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


async def add_user(conn: asyncpg.Connection, name: str, password: str, role: Role) -> None:
    """A new account (``asyncpg.UniqueViolationError`` if the name is taken; ``ValueError`` if it
    is not a ``NAME``)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"an account's name is letters, digits, '.', '-' and '_' (at most 64): {name!r}")
    await conn.execute(
        "INSERT INTO console_user (name, password_hash, role) VALUES ($1, $2, $3)", name, hash_password(password), role
    )


async def set_password(conn: asyncpg.Connection, name: str, password: str) -> bool:
    """A new password for ``name``, whose sessions all end; whether the account exists."""
    done = await conn.execute(
        "UPDATE console_user SET password_hash = $2 WHERE name = $1", name, hash_password(password)
    )
    await conn.execute("DELETE FROM console_session WHERE user_name = $1", name)
    await unlock(conn, name)
    return done == "UPDATE 1"


async def unlock(conn: asyncpg.Connection, name: str) -> int:
    """Forget the failed sign-ins of ``name``: how many."""
    done = await conn.execute("DELETE FROM console_sign_in_failure WHERE user_name = $1", name)
    return int(done.split()[-1])


UNKNOWN = "(not an account)"  # what is logged, audited and counted for a name that is no account's


class SignIn(NamedTuple):
    """A sign-in's outcome: the account (None if refused), why it was refused, and whether for
    too many failures (the password was not even checked)."""

    account: Account | None
    refusal: str = ""
    limited: bool = False
    known: bool = True  # the name typed is an account's (else it is never logged nor kept: it may be a password)


async def sign_in(
    conn: asyncpg.Connection, name: str, password: str, peer: str, failures: int, window: dt.timedelta
) -> SignIn:
    """Check ``password`` for ``name``, unless too many sign-ins failed lately for the account from
    ``peer`` (the address failures are counted by: ``switch.shedding.peer_of``; ``failures`` in
    ``window``), or from ``peer`` at all (four times as many); a failure is kept. Counted by
    address and account together, so that a guesser elsewhere cannot lock an operator out
    (``paysw console unlock`` lifts a lock at once). The password is checked in a thread: scrypt
    takes a tenth of a second, which the console's other requests need."""
    await conn.execute("DELETE FROM console_sign_in_failure WHERE at < now() - $1::interval", window)
    row = await conn.fetchrow("SELECT password_hash, role FROM console_user WHERE name = $1", name)
    if row is None:  # never kept (a password typed as the name): unknown names count together, by address
        name = UNKNOWN
    # Counted as failed before the password is checked, until it proves otherwise: sign-ins at
    # once each count the others, so no more than ``failures`` are ever checked (counted after
    # the check, as many as came at once were).
    tried = await conn.fetchval(
        "INSERT INTO console_sign_in_failure (user_name, remote) VALUES ($1, $2) RETURNING ctid", name, peer
    )
    mine, by_remote = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE user_name = $1), count(*) "
        "FROM console_sign_in_failure WHERE remote = $2 AND at >= now() - $3::interval",
        name, peer, window,
    )  # fmt: skip
    if mine > failures or by_remote > 4 * failures:
        await conn.execute("DELETE FROM console_sign_in_failure WHERE ctid = $1", tried)
        return SignIn(None, "too many failed sign-ins: try again later", limited=True, known=row is not None)
    stored = row["password_hash"] if row else _nobody()
    if await asyncio.to_thread(password_matches, password, stored) and row is not None:
        await conn.execute("DELETE FROM console_sign_in_failure WHERE ctid = $1", tried)
        return SignIn(Account(name, row["role"]))
    return SignIn(None, "wrong name or password", known=row is not None)


async def open_session(conn: asyncpg.Connection, account: Account, idle: dt.timedelta) -> str:
    """A new session for ``account``: the cookie's token (only its hash is kept)."""
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO console_session (token_hash, user_name, csrf, expires_at) "
        "VALUES ($1, $2, $3, now() + $4::interval)",
        _hashed(token), account.name, secrets.token_urlsafe(32), idle,
    )  # fmt: skip
    return token


async def session_of(
    conn: asyncpg.Connection | asyncpg.Pool, token: str, idle: dt.timedelta, longest: dt.timedelta
) -> Session | None:
    """The live session of ``token``, its idle expiry moved on (never past ``longest`` after
    sign-in); None when there is none, or it has expired."""
    row = await conn.fetchrow(
        "UPDATE console_session s SET expires_at = least(now() + $2::interval, s.created_at + $3::interval) "
        "FROM console_user u WHERE s.token_hash = $1 AND u.name = s.user_name AND s.expires_at > now() "
        "RETURNING u.name, u.role, s.csrf, s.expires_at",
        _hashed(token), idle, longest,
    )  # fmt: skip
    if row is None:
        return None
    return Session(Account(row["name"], row["role"]), row["csrf"], row["expires_at"])


async def close_session(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> None:
    await conn.execute("DELETE FROM console_session WHERE token_hash = $1 OR expires_at < now()", _hashed(token))


def _hashed(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
