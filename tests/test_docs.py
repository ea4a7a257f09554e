"""The project holds its own contracts, in step with the code: every response code the switch
can answer is in the wire contract, and the state machine's table and the lists of steps in
docs/architecture.md are the ones the switch runs."""

from __future__ import annotations

import re
from pathlib import Path

from protocols import response_codes as rc
from switch.journal.machine import MOVES, Event, Promise, State

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_response_code_is_in_the_wire_contract():
    section = (DOCS / "iso8583.md").read_text().split("## 4.")[1].split("## 5.")[0]
    documented = set(re.findall(r"(?m)^\| ([0-9A-Z]{2}) \|", section))
    assert documented == set(rc.ALL)


def test_the_state_machine_table_is_the_one_the_journal_runs():
    rows: dict[tuple[State, Promise], dict[Event, State]] = {}
    for move in MOVES:
        rows.setdefault((move.state, move.promise), {})[move.event] = move.to
    order = list(State), list(Promise)
    lines = ["| state | promise | " + " | ".join(e.value for e in Event) + " |", "|---|---|" + "---|" * len(Event)]
    for state, promised in sorted(rows, key=lambda k: (order[0].index(k[0]), order[1].index(k[1]))):
        moves = rows[(state, promised)]
        lines.append(f"| {state} | {promised} | " + " | ".join(moves.get(e, "-") for e in Event) + " |")
    assert "\n".join(lines) in (DOCS / "architecture.md").read_text()


def test_the_steps_table_is_the_one_the_lifecycle_runs():
    from switch.steps import HTTP_STEPS, STEPS

    text = (DOCS / "architecture.md").read_text()
    for txn_type, steps in STEPS.items():
        assert f"| {txn_type.value} | {' -> '.join(steps)} |" in text, txn_type
    for scene, steps in HTTP_STEPS.items():
        assert f"| {scene} over HTTP | {' -> '.join(steps)} |" in text, scene
