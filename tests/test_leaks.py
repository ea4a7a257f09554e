"""Nothing secret leaves the HSM or the wire: traffic through every channel (payment codes, a
card with its PIN, MAC'd messages, bad input) with the switch logging at DEBUG, then no full
payment code or card number, PIN block, key or secret in the logs, the metrics, the answers or
any table of the journal (PCI DSS 3.3.1 and 3.5.1), and none in the answers but the field 2 echo
the contract asks for."""

from __future__ import annotations

import random
import re

import asyncpg

from bench.demo_config import DEMO_DIR
from bench.traffic import CODE_SHAPES, card_number, network, purchase
from hsm import algorithms
from tests.conftest import run
from tests.support import MERCHANT, SENT_PANS, STANS, connected, new_purchase
from tests.test_terminal_security import MAC_TERMINAL, signed_on

JOURNAL_TABLES = ("txn", "txn_move", "reversal", "dead_letter", "late_answer", "hsm_key")


def demo_secrets() -> set[str]:
    """Every demo key as it could appear in text: hex (upper and lower) of DES keys, the LMK and
    SM2 keys, secrets as they are, and each base64 line of the PEM private keys."""
    found: set[str] = set()
    keys = DEMO_DIR / "keys"
    for path in keys.rglob("*"):
        if not path.is_file() or path.suffix in (".md", ".toml") or "public" in path.name:
            continue
        text = path.read_text()
        if "PRIVATE KEY" in text:
            found |= {line for line in text.splitlines() if line and not line.startswith("-----")}
        else:
            found |= {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    return found


def test_no_secret_in_logs_metrics_answers_or_journal(switch, database_url):
    rng = random.Random()
    secrets: set[str] = demo_secrets()
    pans: list[str] = []
    answers: list[dict[str, str]] = []

    async def traffic():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            assert keys.mak is not None and keys.pik is not None
            secrets.update({keys.mak.hex(), keys.pik.hex()})
            for channel in CODE_SHAPES:
                for suffix in ("00", "51", "96"):
                    answers.append(await terminal.request(new_purchase(channel, suffix, terminal=MAC_TERMINAL)))
            for pin in ("123456", "000000"):
                card = card_number(rng)
                pans.append(card)
                message = purchase(MAC_TERMINAL, MERCHANT, card, 777, STANS.next(MAC_TERMINAL), entry_mode="021")
                message["52"] = keys.pin_block(pin, card)
                zpk = bytes.fromhex((DEMO_DIR / "keys/unionpay/zpk").read_text().strip())
                translated = algorithms.tdes_ecb_encrypt(zpk, algorithms.pin_block(pin, card)).hex()
                secrets.update({message["52"], translated, algorithms.pin_block(pin, card).hex()})
                answers.append(await terminal.request(message))
            # Bad input from a MAC terminal: a forged MAC and a malformed card number.
            keys.mak = bytes(16)
            answers.append(await terminal.request(new_purchase("wechat", terminal=MAC_TERMINAL)))
            answers.append(await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "999")))

    run(traffic())
    assert {a["39"] for a in answers} >= {"00", "51", "A0"}
    pans += SENT_PANS
    _, metrics = switch.get("/metrics")
    log = switch.log_path.read_text()
    assert '"level": "DEBUG"' in log  # the switch logged at DEBUG: the check means something
    journal = run(_journal_text(database_url))
    # Answers echo field 2 to the terminal that sent it (spec section 3); nothing else may carry it.
    answers_but_field_2 = repr([{k: v for k, v in a.items() if k != "2"} for a in answers])
    places = {"log": log, "metrics": metrics, "answers": answers_but_field_2, "journal": journal}
    for where, text in places.items():
        folded = text.lower()
        for pan in pans:
            assert pan not in text, f"card number / payment code {pan[:6]}...{pan[-4:]} in the {where}"
        for secret in secrets:
            assert secret.lower() not in folded, f"a key, secret or PIN block ({len(secret)} chars) in the {where}"
    # What may appear is the masked form: first 6 and last 4 only.
    assert re.search(r"\d{6}\*+\d{4}", journal)


async def _journal_text(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        parts = []
        for table in JOURNAL_TABLES:
            rows = await conn.fetch(f"SELECT t::text AS row FROM {table} t")
            parts += [r["row"] for r in rows]
        return "\n".join(parts)
    finally:
        await conn.close()
