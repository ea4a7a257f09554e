"""The journal's schema as an ordered list of migrations, applied once each by its owner (the
switch at start-up on the embedded PostgreSQL; ``paysw journal migrate`` on an external one).

States and their allowed moves are data in ``switch.journal.machine``, written into ``txn_state``
and ``txn_state_move`` by the journal's owner at any start that finds them otherwise (the
switch's runtime role may read them, not write them: ``switch.journal.roles``); statement
triggers (on ``txn`` and on each of its day partitions, whichever a statement names) refuse any
other state or move and record every move with its time in ``txn_move``. Transactions are
partitioned by ``tx_date``, the date of field 7 as the terminal sent it, so that a terminal +
STAN + field 7 always lands in the same partition and the primary key can carry invariant 2.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

from switch.journal import machine
from switch.refused import SchemaNotCurrent

LOCK_ID = 0x70617973  # "pays": serialises migrations and partition creation across front ends

# What journal_make_days checks of the days asked, and the lock that has one front end at a time
# make them (migrations 28 and 30).
_MAKE_DAYS_CHECKS = f"""\
        IF last_day - first_day > 62 THEN  -- days_ahead (60 at most) and two behind, not a catalog's worth
            RAISE EXCEPTION 'at most 63 days at once, not % to %', first_day, last_day
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT pg_catalog.pg_has_role(session_user, current_user, 'MEMBER')  -- for the switch: the days in use
           AND (first_day < current_date - 3 OR last_day > current_date + 63) THEN
            RAISE EXCEPTION 'only the days from % to %, not % to %', current_date - 3, current_date + 63,
                first_day, last_day USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM pg_catalog.pg_advisory_xact_lock({LOCK_ID});
"""

MIGRATIONS: list[str] = [
    # 1: transactions, states, moves, RRN blocks
    """
    CREATE TABLE txn_state (
        state       text PRIMARY KEY,
        final       boolean NOT NULL,
        description text NOT NULL
    );
    INSERT INTO txn_state VALUES
        ('RECEIVED', false, 'written ahead; the channel has not answered yet'),
        ('APPROVED', true,  'the channel took the money'),
        ('DECLINED', true,  'the channel refused it, or certainly never received it'),
        ('PENDING',  false, 'the customer is still confirming at the channel'),
        ('UNKNOWN',  false, 'the outcome at the channel is not known: to be resolved by query');

    CREATE TABLE txn_state_move (
        from_state text NOT NULL REFERENCES txn_state,
        to_state   text NOT NULL REFERENCES txn_state,
        PRIMARY KEY (from_state, to_state)
    );
    INSERT INTO txn_state_move VALUES
        ('RECEIVED', 'APPROVED'), ('RECEIVED', 'DECLINED'), ('RECEIVED', 'PENDING'), ('RECEIVED', 'UNKNOWN'),
        ('PENDING', 'APPROVED'), ('PENDING', 'DECLINED'), ('PENDING', 'UNKNOWN'),
        ('UNKNOWN', 'APPROVED'), ('UNKNOWN', 'DECLINED'), ('UNKNOWN', 'PENDING');

    -- RRNs are handed out in blocks of 1000 so that front ends need no round trip per RRN.
    CREATE SEQUENCE rrn_block_seq MINVALUE 1 MAXVALUE 999999999 NO CYCLE;

    CREATE TABLE txn (
        tx_date          date        NOT NULL,
        terminal_id      text        NOT NULL,
        stan             text        NOT NULL,
        transmitted      text        NOT NULL,  -- field 7 as sent
        rrn              text        NOT NULL,
        kind             text        NOT NULL,
        mti              text        NOT NULL,
        processing_code  text        NOT NULL,
        merchant_id      text        NOT NULL,
        amount_fen       bigint      NOT NULL CHECK (amount_fen >= 0),
        currency         text        NOT NULL,
        local_time       text        NOT NULL,  -- field 12 as sent
        local_date       text        NOT NULL,  -- field 13 as sent
        entry_mode       text        NOT NULL,
        pan_masked       text        NOT NULL,  -- first 6 and last 4 only
        pan_hash         bytea       NOT NULL,  -- keyed fingerprint, for matching
        channel          text        NOT NULL,
        out_trade_no     text        NOT NULL,
        request_hash     bytea       NOT NULL,  -- tells identical retransmissions from conflicting ones
        state            text        NOT NULL REFERENCES txn_state,
        response_code    text,
        auth_id          text,
        channel_code     text,
        channel_message  text,
        channel_txn_id   text,
        received_at      timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tx_date, terminal_id, stan, transmitted),
        UNIQUE (tx_date, rrn)
    ) PARTITION BY RANGE (tx_date);
    CREATE INDEX txn_by_rrn ON txn (rrn);
    CREATE INDEX txn_by_out_trade_no ON txn (out_trade_no);
    CREATE INDEX txn_open ON txn (state) WHERE state IN ('RECEIVED', 'PENDING', 'UNKNOWN');

    CREATE TABLE txn_move (
        tx_date    date        NOT NULL,
        rrn        text        NOT NULL,
        from_state text,
        to_state   text        NOT NULL,
        moved_at   timestamptz NOT NULL DEFAULT clock_timestamp()
    ) PARTITION BY RANGE (tx_date);
    CREATE INDEX txn_move_by_rrn ON txn_move (rrn);

    CREATE FUNCTION txn_record_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state) VALUES (NEW.tx_date, NEW.rrn, NULL, NEW.state);
        RETURN NULL;
    END $$;

    CREATE FUNCTION txn_guard_move() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.state IS DISTINCT FROM OLD.state THEN
            IF NOT EXISTS (SELECT 1 FROM txn_state_move WHERE from_state = OLD.state AND to_state = NEW.state) THEN
                RAISE EXCEPTION 'state move % -> % not allowed (rrn %)', OLD.state, NEW.state, OLD.rrn
                    USING ERRCODE = 'check_violation';
            END IF;
            INSERT INTO txn_move (tx_date, rrn, from_state, to_state)
                VALUES (NEW.tx_date, NEW.rrn, OLD.state, NEW.state);
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
    END $$;

    CREATE TRIGGER txn_record_insert AFTER INSERT ON txn FOR EACH ROW EXECUTE FUNCTION txn_record_insert();
    CREATE TRIGGER txn_guard_move BEFORE UPDATE ON txn FOR EACH ROW EXECUTE FUNCTION txn_guard_move();
    """,
    # 2: resolution of open transactions (pending, unknown, orphaned by a crash)
    """
    INSERT INTO txn_state VALUES
        ('CANCELLED', true, 'closed or reversed at the channel: the channel keeps no money');
    INSERT INTO txn_state_move VALUES
        ('RECEIVED', 'CANCELLED'), ('PENDING', 'CANCELLED'), ('UNKNOWN', 'CANCELLED');

    -- When the resolver looks at an open transaction next, and how often it has.
    ALTER TABLE txn ADD COLUMN next_check_at timestamptz;
    ALTER TABLE txn ADD COLUMN checks int NOT NULL DEFAULT 0;
    UPDATE txn SET next_check_at = received_at + interval '60 seconds'
        WHERE state IN ('RECEIVED', 'PENDING', 'UNKNOWN');
    CREATE INDEX txn_due ON txn (next_check_at) WHERE state IN ('RECEIVED', 'PENDING', 'UNKNOWN');
    """,
    # 3: reversals (0400) carried out store-and-forward, and dead letters for a person
    """
    INSERT INTO txn_state VALUES
        ('REVERSED', true, 'reversed at the terminal''s request: the channel keeps no money');
    INSERT INTO txn_state_move VALUES
        ('RECEIVED', 'REVERSED'), ('PENDING', 'REVERSED'), ('UNKNOWN', 'REVERSED'), ('APPROVED', 'REVERSED');

    -- Set, and committed, before the 0400 is answered; the resolver carries it out.
    ALTER TABLE txn ADD COLUMN reversal_requested_at timestamptz;
    CREATE INDEX txn_reversal_due ON txn (next_check_at)
        WHERE state = 'APPROVED' AND reversal_requested_at IS NOT NULL;

    -- Every reversal as received, keyed by the original it names: a retransmission gets the same
    -- answer, and an original that arrives after its reversal is never sent.
    CREATE TABLE reversal (
        orig_tx_date     date        NOT NULL,
        terminal_id      text        NOT NULL,
        orig_stan        text        NOT NULL,
        orig_transmitted text        NOT NULL,
        stan             text        NOT NULL,
        transmitted      text        NOT NULL,
        amount_fen       bigint      NOT NULL,
        rrn              text        NOT NULL UNIQUE,
        received_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (orig_tx_date, terminal_id, orig_stan, orig_transmitted)
    );

    -- Transactions the resolver gave up on (too many tries, too old, or a refusal): for a person.
    -- The transaction itself stays as it is, never dropped.
    CREATE TABLE dead_letter (
        tx_date     date        NOT NULL,
        terminal_id text        NOT NULL,
        stan        text        NOT NULL,
        transmitted text        NOT NULL,
        rrn         text        NOT NULL,
        channel     text        NOT NULL,
        state       text        NOT NULL,
        reason      text        NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz,
        resolution  text,
        PRIMARY KEY (tx_date, terminal_id, stan, transmitted)
    );
    """,
    # 4: voids and refunds, each a transaction of its own that names its purchase
    """
    INSERT INTO txn_state VALUES
        ('VOIDED', true, 'voided the same day: the channel keeps no money');
    INSERT INTO txn_state_move VALUES ('APPROVED', 'VOIDED');

    ALTER TABLE txn ADD COLUMN original_rrn text;  -- a void or refund: the purchase it undoes
    -- A purchase: what its voids and refunds have taken or reserved (in progress counts: never over).
    ALTER TABLE txn ADD COLUMN refunded_fen bigint NOT NULL DEFAULT 0;
    ALTER TABLE txn ADD CONSTRAINT txn_refunds_within_amount CHECK (refunded_fen BETWEEN 0 AND amount_fen);
    """,
    # 5: channel answers that came after the terminal was answered: kept, matched to their
    # transaction; the resolver finishes the transaction from the channel's side
    """
    CREATE TABLE late_answer (
        tx_date        date        NOT NULL,
        terminal_id    text        NOT NULL,
        stan           text        NOT NULL,
        transmitted    text        NOT NULL,
        op             text        NOT NULL,
        outcome        text        NOT NULL,
        channel_code   text        NOT NULL,
        channel_txn_id text        NOT NULL,
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX late_answer_by_txn ON late_answer (tx_date, terminal_id, stan, transmitted);
    """,
    # 6: keys under the LMK (hsm.keys.KeyRecord), by version; the newest is in use (a terminal's working
    # keys keep the last two: switch.keystore)
    """
    CREATE TABLE hsm_key (
        label       text        NOT NULL,
        version     int         NOT NULL CHECK (version >= 1),
        kind        text        NOT NULL,
        blob        bytea       NOT NULL,
        check_value text        NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (label, version)
    );
    """,
    # 7: reconciliation batches (switch.recon): one row per channel, day and hour (-1: the whole
    # day), its next step persisted; the statement's rows and the journal's slice copied into work
    # tables; one item per compared transaction or refund, its class and whether it is resolved
    """
    CREATE TABLE recon_batch (
        id          bigserial   PRIMARY KEY,
        channel     text        NOT NULL,
        day         date        NOT NULL,
        hour        int         NOT NULL CHECK (hour BETWEEN -1 AND 23),
        step        text        NOT NULL DEFAULT 'fetch',
        statement   bytea,
        summary     jsonb,
        error       text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (channel, day, hour)
    );
    CREATE TABLE recon_statement_row (
        batch_id       bigint      NOT NULL REFERENCES recon_batch ON DELETE CASCADE,
        kind           text        NOT NULL,
        out_trade_no   text        NOT NULL,
        refund_no      text        NOT NULL,
        channel_txn_id text        NOT NULL,
        status         text        NOT NULL,
        amount_fen     bigint      NOT NULL,
        fee_fen        bigint      NOT NULL,
        at             timestamptz NOT NULL
    );
    CREATE INDEX recon_statement_row_by_batch ON recon_statement_row (batch_id);
    CREATE TABLE recon_journal_row (
        batch_id     bigint NOT NULL REFERENCES recon_batch ON DELETE CASCADE,
        kind         text   NOT NULL,
        out_trade_no text   NOT NULL,  -- a purchase's order number; a refund's is its refund number
        rrn          text   NOT NULL,
        state        text   NOT NULL,
        amount_fen   bigint NOT NULL
    );
    CREATE INDEX recon_journal_row_by_batch ON recon_journal_row (batch_id);
    CREATE TABLE recon_item (
        id             bigserial PRIMARY KEY,
        batch_id       bigint    NOT NULL REFERENCES recon_batch ON DELETE CASCADE,
        class          text      NOT NULL,  -- MATCHED, LONG, SHORT, AMOUNT, STATUS, REFUND
        kind           text      NOT NULL,  -- PAY or REFUND
        out_trade_no   text      NOT NULL,
        rrn            text,
        journal_state  text,
        journal_fen    bigint,
        channel_status text,
        channel_fen    bigint,
        status         text      NOT NULL,  -- MATCHED, OPEN (a difference to handle), RESOLVED
        note           text
    );
    CREATE INDEX recon_item_by_batch ON recon_item (batch_id, class);
    CREATE INDEX recon_item_open ON recon_item (status) WHERE status = 'OPEN';
    """,
    # 8: what the automatic error handling did (one action per item at most) and what people did
    """
    CREATE TABLE recon_action (
        id       bigserial   PRIMARY KEY,
        item_id  bigint      NOT NULL UNIQUE REFERENCES recon_item ON DELETE CASCADE,
        rule     text        NOT NULL,  -- the automatic rule, or 'operator'
        detail   text        NOT NULL,
        at       timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE recon_batch ADD COLUMN handling jsonb;  -- fixed, left, stopped by the threshold
    """,
    # 9: settlement: each reconciled payment or refund settled once, on the day it was settled
    """
    CREATE TABLE settlement_item (
        kind         text   NOT NULL,  -- PAY or REFUND
        out_trade_no text   NOT NULL,  -- a refund's: its refund number
        settled_on   date   NOT NULL,
        merchant_id  text   NOT NULL,
        channel      text   NOT NULL,
        amount_fen   bigint NOT NULL,  -- as the journal has it
        channel_fen  bigint,           -- as the channel's statement had it (none: settled on a person's word)
        fee_fen      bigint NOT NULL,  -- a refund's is negative: the fee on the refunded part comes back
        PRIMARY KEY (kind, out_trade_no)
    );
    CREATE INDEX settlement_item_by_day ON settlement_item (settled_on);
    """,
    # 10: the state moves checked and recorded once per statement, not once per row: the row
    # triggers' plpgsql and their one-row inserts were near half of PostgreSQL's work on the hot
    # path (a batch of outcomes is one statement). Only the touch of updated_at stays per row.
    """
    DROP TRIGGER txn_record_insert ON txn;
    DROP TRIGGER txn_guard_move ON txn;
    DROP FUNCTION txn_record_insert();
    DROP FUNCTION txn_guard_move();

    CREATE FUNCTION txn_touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END $$;
    CREATE TRIGGER txn_touch BEFORE UPDATE ON txn FOR EACH ROW EXECUTE FUNCTION txn_touch();

    CREATE FUNCTION txn_record_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state) SELECT tx_date, rrn, NULL, state FROM inserted;
        RETURN NULL;
    END $$;
    CREATE TRIGGER txn_record_inserts AFTER INSERT ON txn REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION txn_record_inserts();

    CREATE FUNCTION txn_record_moves() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        SELECT o.state AS from_state, n.state AS to_state, n.rrn INTO bad
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            WHERE n.state IS DISTINCT FROM o.state
              AND NOT EXISTS (SELECT 1 FROM txn_state_move m WHERE m.from_state = o.state AND m.to_state = n.state)
            LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            RAISE EXCEPTION 'state move % -> % not allowed (rrn %)', bad.from_state, bad.to_state, bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state)
            SELECT n.tx_date, n.rrn, o.state, n.state
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            WHERE n.state IS DISTINCT FROM o.state;
        RETURN NULL;
    END $$;
    CREATE TRIGGER txn_record_moves AFTER UPDATE ON txn REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION txn_record_moves();
    """,
    # 11: the state machine's moves by event and promise (switch.journal.machine, written at every
    # start by sync_machine); the amounts held by voids and refunds under way apart from those
    # given back, so that neither hides in the other
    """
    CREATE TABLE txn_event_move (
        state    text NOT NULL REFERENCES txn_state,
        event    text NOT NULL,
        promise  text NOT NULL,
        to_state text NOT NULL REFERENCES txn_state,
        PRIMARY KEY (event, state, promise)
    );
    ALTER TABLE txn ADD COLUMN reserved_fen bigint NOT NULL DEFAULT 0;
    UPDATE txn p SET reserved_fen = held.fen, refunded_fen = p.refunded_fen - held.fen
    FROM (
        SELECT o.tx_date, o.terminal_id, o.stan, o.transmitted,
               sum(CASE WHEN u.kind = 'void' THEN o.amount_fen ELSE u.amount_fen END) AS fen
        FROM txn u JOIN txn o ON o.rrn = u.original_rrn AND o.merchant_id = u.merchant_id AND o.kind = 'purchase'
        WHERE u.kind IN ('void', 'refund') AND u.state IN ('RECEIVED', 'PENDING', 'UNKNOWN')
        GROUP BY 1, 2, 3, 4
    ) held
    WHERE (p.tx_date, p.terminal_id, p.stan, p.transmitted)
        = (held.tx_date, held.terminal_id, held.stan, held.transmitted);
    ALTER TABLE txn DROP CONSTRAINT txn_refunds_within_amount;
    ALTER TABLE txn ADD CONSTRAINT txn_taken_within_amount
        CHECK (reserved_fen >= 0 AND refunded_fen >= 0 AND reserved_fen + refunded_fen <= amount_fen);
    """,
    # 12: reconciliation sees a purchase whose reversal is still owed as open, not as money kept
    """
    ALTER TABLE recon_journal_row ADD COLUMN reversing boolean NOT NULL DEFAULT false;
    """,
    # 13: what a reversal was last answered: one answered "original not found" while its original's
    # write-ahead was under way is found afterwards and carried out (Journal.flag_overtaken_originals)
    """
    ALTER TABLE reversal ADD COLUMN code text;
    CREATE INDEX reversal_not_found ON reversal (received_at) WHERE code = '25';
    """,
    # 14: less work per purchase (bench/journal_speed.py). A row's state is checked once per
    # statement, by the triggers of 10 (a new one against txn_state, a move against
    # txn_state_move, each table read once), not by a foreign key's query per row written or moved. One index on the
    # RRN, not two: RRN first serves the lookups by RRN, and with the day, the RRN's uniqueness.
    # Open rows are found through txn_due. The machine's moves are an expression
    # (machine.MOVE_SQL), no longer a table the outcome joins.
    """
    ALTER TABLE txn DROP CONSTRAINT txn_state_fkey;
    ALTER TABLE txn DROP CONSTRAINT txn_tx_date_rrn_key;
    DROP INDEX txn_by_rrn;
    ALTER TABLE txn ADD CONSTRAINT txn_rrn_key UNIQUE (rrn, tx_date);
    DROP INDEX txn_open;
    DROP TABLE txn_event_move;

    CREATE OR REPLACE FUNCTION txn_record_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        SELECT i.state, i.rrn INTO bad FROM inserted i WHERE i.state NOT IN (SELECT state FROM txn_state) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            RAISE EXCEPTION 'state % unknown (rrn %)', bad.state, bad.rrn USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state) SELECT tx_date, rrn, NULL, state FROM inserted;
        RETURN NULL;
    END $$;

    -- The moves recorded and checked in one pass over the old and new rows, against the allowed
    -- pairs read once into a hash (not a lookup a row).
    CREATE OR REPLACE FUNCTION txn_record_moves() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        WITH moved AS (
            INSERT INTO txn_move (tx_date, rrn, from_state, to_state)
            SELECT n.tx_date, n.rrn, o.state, n.state
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            WHERE n.state IS DISTINCT FROM o.state
            RETURNING rrn, from_state, to_state
        )
        SELECT * INTO bad FROM moved
            WHERE (from_state, to_state) NOT IN (SELECT from_state, to_state FROM txn_state_move) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            RAISE EXCEPTION 'state move % -> % not allowed (rrn %)', bad.from_state, bad.to_state, bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$;
    """,
    # 15: one word, one meaning. A transaction's type (purchase, void, refund) is ``txn_type``, as is
    # its copy in reconciliation (``kind`` is left to what a channel is); a statement's or a
    # settlement's PAY or REFUND is its ``entry``. ``refunded_fen`` holds what refunds gave back,
    # and no longer a void's amount too: a voided purchase says so by its state, VOIDED (a void
    # takes the whole of an untouched purchase, so its refunded_fen was that void's alone).
    """
    ALTER TABLE txn RENAME COLUMN kind TO txn_type;
    ALTER TABLE recon_journal_row RENAME COLUMN kind TO txn_type;
    ALTER TABLE recon_statement_row RENAME COLUMN kind TO entry;
    ALTER TABLE recon_item RENAME COLUMN kind TO entry;
    ALTER TABLE settlement_item RENAME COLUMN kind TO entry;
    UPDATE txn SET refunded_fen = 0 WHERE state = 'VOIDED' AND refunded_fen <> 0;
    """,
    # 16: risk control (risk/): the rules that fired on a transaction, one row each, so a decline
    # is explained in the transaction's record and shadow rules are seen; the black and grey lists
    # (codes and cards by keyed fingerprint only); who changed a list, and when
    """
    CREATE TABLE risk_decision (
        tx_date     date        NOT NULL,
        rrn         text        NOT NULL,
        rule_id     text        NOT NULL,
        action      text        NOT NULL CHECK (action IN ('decline', 'review', 'alert')),
        mode        text        NOT NULL CHECK (mode IN ('enforce', 'shadow')),
        code        text        NOT NULL,  -- what a decline of the rule answers
        merchant_id text        NOT NULL,
        terminal_id text        NOT NULL,
        channel     text        NOT NULL,
        amount_fen  bigint      NOT NULL,
        decided_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tx_date, rrn, rule_id)
    );
    CREATE INDEX risk_decision_by_day ON risk_decision (tx_date, rule_id);
    CREATE TABLE risk_list (
        colour   text        NOT NULL CHECK (colour IN ('black', 'grey')),
        list_of  text        NOT NULL CHECK (list_of IN ('code', 'terminal', 'merchant')),
        value    text        NOT NULL,
        reason   text        NOT NULL,
        added_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (colour, list_of, value)
    );
    CREATE TABLE risk_audit (
        id      bigserial   PRIMARY KEY,
        at      timestamptz NOT NULL DEFAULT now(),
        action  text        NOT NULL,
        detail  text        NOT NULL,
        by_whom text        NOT NULL
    );
    """,
    # 17: the moves that change a count (approved, reversed, voided, cancelled), read in the order
    # their transactions committed by the risk actors that follow the journal (risk.actor): each
    # move's transaction id, so a reader's snapshot says which it has seen
    """
    ALTER TABLE txn_move ADD COLUMN xid xid8;
    ALTER TABLE txn_move ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
    CREATE INDEX txn_move_counted ON txn_move (xid) WHERE to_state IN ('APPROVED', 'REVERSED', 'VOIDED', 'CANCELLED');
    """,
    # 18: the merchant side (switch.merchant). A merchant's order over HTTP is a purchase row like a
    # terminal's, under the pseudo-terminal HTTP with its RRN as its STAN; ``merchant_order`` names
    # it by the merchant's own order number (one order per number), ``merchant_refund`` a refund
    # of it by the merchant's refund number. A QR order expires: the
    # resolver closes it then. The channels' notifications are kept, matched or not. The outbox
    # of notifications to merchants is filled by the move trigger, in the transaction of the move:
    # one per final state of a purchase or refund of a merchant with a URL (its own, or the order's)
    """
    ALTER TABLE txn ADD COLUMN expires_at timestamptz;
    CREATE TABLE merchant_order (
        merchant_id text        NOT NULL,
        order_no    text        NOT NULL,
        tx_date     date        NOT NULL,
        rrn         text        NOT NULL UNIQUE,
        transmitted text        NOT NULL,  -- with the day and the RRN, its row's key (terminal HTTP)
        scene       text        NOT NULL CHECK (scene IN ('qr', 'code')),
        subject     text        NOT NULL,
        notify_url  text,
        qr_code     text,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (merchant_id, order_no)
    );
    CREATE TABLE merchant_refund (
        merchant_id text        NOT NULL,
        refund_no   text        NOT NULL,
        order_no    text        NOT NULL,
        tx_date     date        NOT NULL,
        rrn         text        NOT NULL UNIQUE,
        transmitted text        NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (merchant_id, refund_no),
        FOREIGN KEY (merchant_id, order_no) REFERENCES merchant_order
    );
    CREATE TABLE merchant_nonce (
        merchant_id text        NOT NULL,
        nonce       text        NOT NULL,
        seen_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (merchant_id, nonce)
    );
    CREATE INDEX merchant_nonce_age ON merchant_nonce (seen_at);
    CREATE TABLE channel_notice (
        id             bigserial   PRIMARY KEY,
        channel        text        NOT NULL,
        out_trade_no   text        NOT NULL,
        amount_fen     bigint      NOT NULL,
        paid           boolean     NOT NULL,
        channel_txn_id text        NOT NULL,
        outcome        text        NOT NULL,  -- recorded, unchanged, unknown order, amount differs
        received_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX channel_notice_unmatched ON channel_notice (received_at) WHERE outcome <> 'recorded';
    CREATE TABLE merchant_endpoint (
        merchant_id text PRIMARY KEY,
        url         text NOT NULL
    );
    CREATE TABLE notice_outbox (
        tx_date      date        NOT NULL,
        rrn          text        NOT NULL,
        state        text        NOT NULL,
        merchant_id  text        NOT NULL,
        url          text        NOT NULL,
        attempts     int         NOT NULL DEFAULT 0,
        next_at      timestamptz NOT NULL DEFAULT now(),
        created_at   timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz,
        dead_at      timestamptz,
        last_error   text,
        PRIMARY KEY (rrn, state)
    );
    CREATE INDEX notice_outbox_due ON notice_outbox (next_at) WHERE delivered_at IS NULL AND dead_at IS NULL;

    CREATE OR REPLACE FUNCTION txn_record_moves() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        WITH moved AS (
            INSERT INTO txn_move (tx_date, rrn, from_state, to_state)
            SELECT n.tx_date, n.rrn, o.state, n.state
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            WHERE n.state IS DISTINCT FROM o.state
            RETURNING rrn, from_state, to_state
        )
        SELECT * INTO bad FROM moved
            WHERE (from_state, to_state) NOT IN (SELECT from_state, to_state FROM txn_state_move) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            RAISE EXCEPTION 'state move % -> % not allowed (rrn %)', bad.from_state, bad.to_state, bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO notice_outbox (tx_date, rrn, state, merchant_id, url)
            SELECT n.tx_date, n.rrn, n.state, n.merchant_id, coalesce(mo.notify_url, me.url)
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            JOIN txn_state s ON s.state = n.state AND s.final
            LEFT JOIN merchant_order mo ON mo.rrn = coalesce(n.original_rrn, n.rrn)  -- a refund: its order's URL
            LEFT JOIN merchant_endpoint me ON me.merchant_id = n.merchant_id
            WHERE n.state IS DISTINCT FROM o.state AND n.txn_type IN ('purchase', 'refund')
              AND coalesce(mo.notify_url, me.url) IS NOT NULL
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    """,
    # 19: live configuration and the operators' console (switch.live, switch.console). A section of
    # the configuration (merchants, terminals, routing) once kept here replaces the file's in every
    # front end; its version guards against two people's edits crossing. Console accounts (the
    # password under scrypt), sessions (the cookie's hash only), sign-in failures (rate limit) and
    # the audit log, which refuses UPDATE, DELETE and TRUNCATE: nobody edits it from the console.
    """
    CREATE TABLE live_config (
        section    text        PRIMARY KEY CHECK (section IN ('merchants', 'terminals', 'routing')),
        body       jsonb       NOT NULL,
        version    bigint      NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT now(),
        changed_by text        NOT NULL
    );
    CREATE TABLE console_user (
        name          text        PRIMARY KEY,
        password_hash text        NOT NULL,
        role          text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        created_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE console_session (
        token_hash bytea       PRIMARY KEY,
        user_name  text        NOT NULL REFERENCES console_user ON DELETE CASCADE,
        csrf       text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
    );
    CREATE TABLE console_sign_in_failure (
        user_name text        NOT NULL,
        remote    text        NOT NULL,
        at        timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX console_sign_in_failure_by_user ON console_sign_in_failure (user_name, at);
    CREATE INDEX console_sign_in_failure_by_remote ON console_sign_in_failure (remote, at);
    CREATE TABLE console_audit (
        id        bigserial   PRIMARY KEY,
        at        timestamptz NOT NULL DEFAULT clock_timestamp(),
        user_name text        NOT NULL,
        action    text        NOT NULL,
        target    text        NOT NULL,
        before    jsonb,
        after     jsonb,
        outcome   text        NOT NULL
    );
    CREATE FUNCTION console_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the console audit log is append-only' USING ERRCODE = 'insufficient_privilege';
    END $$;
    CREATE TRIGGER console_audit_no_change BEFORE UPDATE OR DELETE ON console_audit
        FOR EACH ROW EXECUTE FUNCTION console_audit_append_only();
    CREATE TRIGGER console_audit_no_truncate BEFORE TRUNCATE ON console_audit
        FOR EACH STATEMENT EXECUTE FUNCTION console_audit_append_only();
    """,
    # 20: the channels' limits and breakers, and the risk rules, kept live too (switch.live.LIVE).
    """
    ALTER TABLE live_config DROP CONSTRAINT live_config_section_check;
    ALTER TABLE live_config ADD CONSTRAINT live_config_section_check
        CHECK (section IN ('merchants', 'terminals', 'routing', 'limits', 'rules'));
    """,
    # 21: each front end's outcome of a reload, by who asked (paysw reload waits for them all).
    """
    CREATE TABLE config_reload (
        asked     text        NOT NULL,  -- the NOTIFY payload: paysw reload's tag, console:NAME, signal
        front_end text        NOT NULL,  -- host/pid listen
        at        timestamptz NOT NULL DEFAULT now(),
        result    text        NOT NULL CHECK (result IN ('ok', 'invalid', 'failed')),
        detail    text        NOT NULL,
        PRIMARY KEY (asked, front_end)
    );
    """,
    # 22: the resolver's lease of its own (store._CLAIM_SQL): next_check_at is when to look again,
    # which a reversal or a notification makes "now" while a resolver may be at work on it.
    # The lock it needs on every partition waits behind any long reader, and every write behind it:
    # better to fail the start (and be retried) than to stall the front ends already running.
    """
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE txn ADD COLUMN leased_until timestamptz;
    SET LOCAL lock_timeout = DEFAULT;
    """,
    # 23: a dead letter given up on again after it was handed back to the resolver is reopened
    # (store._DEAD_LETTER_SQL), its earlier reason and resolution kept in its reason.
    """
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE dead_letter ADD COLUMN reopened_at timestamptz;
    SET LOCAL lock_timeout = DEFAULT;
    """,
    # 24: a transaction handed back to the resolver by a person (store.retry_dead_letter) is tried
    # again as if new: its tries and days count from then. (A constant default: no rewrite.)
    """
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE txn ADD COLUMN retried_at timestamptz, ADD COLUMN checks_at_retry integer NOT NULL DEFAULT 0;
    SET LOCAL lock_timeout = DEFAULT;
    """,
    # 25: the journal held to its rules whatever table a statement names, txn or a day's partition.
    # A statement's statement triggers are those of the table it names: an UPDATE or INSERT naming
    # a partition moved states past the guard of 10 and 14, and no move was recorded; so each
    # partition of txn has the guard and the record of moves too (through txn only txn's fire:
    # nothing is recorded twice). And nothing is lost: the rows of txn and txn_move are never
    # deleted nor truncated, and a recorded move is never changed nor made up (only the triggers
    # of txn write txn_move: pg_trigger_depth() is 0 for any other writer). A row trigger of a
    # partitioned table is every partition's, made later or not; a TRUNCATE trigger is each
    # table's own (journal_guard_partition, which ensure_partitions runs on every partition found
    # without it). Retention is a person's detaching or dropping of a day's partition, which no
    # trigger sees. The parents are locked first, as writers take them: locking partitions one by
    # one under a writer's lock on txn deadlocked with it.
    """
    SET LOCAL lock_timeout = '5s';
    LOCK TABLE txn, txn_move IN SHARE ROW EXCLUSIVE MODE;
    CREATE FUNCTION journal_keeps_rows() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the journal keeps every row: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END $$;
    CREATE TRIGGER txn_keeps_rows BEFORE DELETE ON txn FOR EACH ROW EXECUTE FUNCTION journal_keeps_rows();
    CREATE TRIGGER txn_keeps_all BEFORE TRUNCATE ON txn FOR EACH STATEMENT EXECUTE FUNCTION journal_keeps_rows();
    CREATE TRIGGER txn_move_keeps_rows BEFORE UPDATE OR DELETE ON txn_move
        FOR EACH ROW EXECUTE FUNCTION journal_keeps_rows();
    CREATE TRIGGER txn_move_made_by_txn BEFORE INSERT ON txn_move
        FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION journal_keeps_rows();
    CREATE TRIGGER txn_move_keeps_all BEFORE TRUNCATE ON txn_move
        FOR EACH STATEMENT EXECUTE FUNCTION journal_keeps_rows();

    CREATE FUNCTION journal_guard_partition(part regclass) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        parent regclass := (SELECT inhparent FROM pg_inherits WHERE inhrelid = part);
    BEGIN
        IF parent = 'txn'::regclass AND NOT EXISTS (
            SELECT 1 FROM pg_trigger WHERE tgrelid = part AND tgname = 'txn_record_moves'
        ) THEN
            EXECUTE format('CREATE TRIGGER txn_record_inserts AFTER INSERT ON %s REFERENCING NEW TABLE AS inserted '
                'FOR EACH STATEMENT EXECUTE FUNCTION txn_record_inserts()', part);
            EXECUTE format('CREATE TRIGGER txn_record_moves AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows '
                'NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION txn_record_moves()', part);
        END IF;
        IF parent IN ('txn'::regclass, 'txn_move'::regclass) AND NOT EXISTS (
            SELECT 1 FROM pg_trigger WHERE tgrelid = part AND tgname = 'journal_keeps_all'
        ) THEN
            EXECUTE format('CREATE TRIGGER journal_keeps_all BEFORE TRUNCATE ON %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION journal_keeps_rows()', part);
        END IF;
    END $$;
    SELECT journal_guard_partition(inhrelid::regclass) FROM pg_inherits
        WHERE inhparent IN ('txn'::regclass, 'txn_move'::regclass);
    SET LOCAL lock_timeout = DEFAULT;
    """,
    # 26: the records beside the journal are kept as it is (25): the reversals acknowledged (one
    # deleted, its original arriving late would be sent and kept), the dead letters, the channels'
    # late answers and notifications, the risk decisions and list changes, the merchants' orders
    # and refunds, and what was settled. The switch only ever adds to them or updates them.
    # (Reconciliation's working tables are rebuilt by a batch run afresh, and sessions, nonces and
    # the like expire: those are deleted.)
    """
    SET LOCAL lock_timeout = '5s';
    DO $$
    DECLARE
        kept text;
    BEGIN
        FOREACH kept IN ARRAY ARRAY['reversal', 'dead_letter', 'late_answer', 'channel_notice', 'risk_decision',
                                    'risk_audit', 'merchant_order', 'merchant_refund', 'settlement_item'] LOOP
            EXECUTE format('CREATE TRIGGER %I BEFORE DELETE ON %I '
                'FOR EACH ROW EXECUTE FUNCTION journal_keeps_rows()', kept || '_keeps_rows', kept);
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
                'FOR EACH STATEMENT EXECUTE FUNCTION journal_keeps_rows()', kept || '_keeps_all', kept);
        END LOOP;
    END $$;
    SET LOCAL lock_timeout = DEFAULT;
    """,
    # 27: a transaction is written in the one state the machine says (machine.BORN, RECEIVED) and
    # comes to any other by a move: a row written APPROVED (a COPY, say) had no move to show for it.
    # Checked in the same one pass over the rows written as the state's existence.
    """
    ALTER TABLE txn_state ADD COLUMN born boolean NOT NULL DEFAULT false;
    CREATE OR REPLACE FUNCTION txn_record_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        SELECT i.state, i.rrn, s.state IS NULL AS unknown INTO bad
            FROM inserted i LEFT JOIN txn_state s ON s.state = i.state
            WHERE NOT coalesce(s.born, false) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            IF bad.unknown THEN
                RAISE EXCEPTION 'state % unknown (rrn %)', bad.state, bad.rrn USING ERRCODE = 'check_violation';
            END IF;
            RAISE EXCEPTION 'state % is not one a transaction is written in: it is written %, then moved (rrn %)',
                bad.state, (SELECT string_agg(state, ', ') FROM txn_state WHERE born), bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state) SELECT tx_date, rrn, NULL, state FROM inserted;
        RETURN NULL;
    END $$;
    """,
    # 28: the switch's runtime role may own nothing (switch.journal.roles), so that its statements
    # can neither switch the guards off nor truncate. The guard's triggers record moves and
    # notifications as the journal's owner, so that role need not (and may not) write txn_move or
    # add to notice_outbox; the partitions' upkeep is done as the owner on its behalf: making the
    # days to come and guarding every partition (25), and analyzing a young day's
    # (store.analyze_young). Each resolves names in the journal's schema, then pg_temp, whoever
    # fires or calls it: a temporary txn_state_move of the caller's would otherwise be the guard's.
    # Built-ins are named in pg_catalog; the role may not create in the schema (roles.grant).
    f"""
    SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);
    ALTER FUNCTION txn_record_inserts() SECURITY DEFINER SET search_path FROM CURRENT;
    ALTER FUNCTION txn_record_moves() SECURITY DEFINER SET search_path FROM CURRENT;
    ALTER FUNCTION journal_guard_partition(regclass) SET search_path FROM CURRENT;
    CREATE FUNCTION journal_make_days(first_day date, last_day date) RETURNS SETOF text LANGUAGE plpgsql
        SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
    DECLARE
        day date := first_day;
        parent text;
        made text;
    BEGIN
{_MAKE_DAYS_CHECKS}        WHILE day <= last_day LOOP
            FOREACH parent IN ARRAY ARRAY['txn', 'txn_move'] LOOP
                made := parent || '_' || pg_catalog.to_char(day, 'YYYYMMDD');  -- schema.partition's name
                IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), made)) IS NULL THEN
                    EXECUTE pg_catalog.format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                        pg_catalog.current_schema(), made, pg_catalog.current_schema(), parent, day, day + 1);
                    RETURN NEXT made;
                END IF;
            END LOOP;
            day := day + 1;
        END LOOP;
        PERFORM journal_guard_partition(inhrelid::regclass) FROM pg_catalog.pg_inherits
            WHERE inhparent IN ('txn'::regclass, 'txn_move'::regclass);
    END $$;
    -- Only what the owner may analyze (PostgreSQL skips the rest with a warning, and they would be
    -- found young again every time), of the partitions of txn and txn_move named.
    CREATE FUNCTION journal_analyze_young(names text[], min_rows bigint) RETURNS SETOF text LANGUAGE plpgsql
        SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        young regclass;
    BEGIN
        FOR young IN
            SELECT s.relid::regclass FROM pg_catalog.pg_stat_user_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid
                JOIN pg_catalog.pg_inherits i ON i.inhrelid = s.relid
                    AND i.inhparent IN ('txn'::regclass, 'txn_move'::regclass)
            WHERE s.relname = ANY(names) AND s.schemaname = pg_catalog.current_schema() AND s.last_analyze IS NULL
                AND s.last_autoanalyze IS NULL AND s.n_mod_since_analyze >= GREATEST(min_rows, 1)
                AND (pg_catalog.pg_has_role(c.relowner, 'USAGE')
                     OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user))
        LOOP
            EXECUTE pg_catalog.format('ANALYZE %s', young);
            RETURN NEXT young::text;  -- regclass's own text: quoted where it must be
        END LOOP;
    END $$;
    -- Nobody but the owner may put them on a table (a temporary one of the caller's, say).
    REVOKE ALL ON FUNCTION txn_record_inserts(), txn_record_moves() FROM PUBLIC;
    REVOKE ALL ON FUNCTION journal_make_days(date, date), journal_analyze_young(text[], bigint) FROM PUBLIC;
    """,
    # 29: the field 7 and STAN of the last sign-on or key change each terminal sent, its MAC and
    # field 7 good (switch.terminal_keys): such a request, MAC'd under a key that never changes (the TMK's
    # sign-on variant) or not at once (the MAK), gives keys only when it comes after that, so
    # that one captured and sent again cannot rotate the terminal's keys and lock it out.
    """
    CREATE TABLE terminal_key_request (
        terminal_id text        PRIMARY KEY,
        sent_at     timestamptz NOT NULL,
        stan        text        NOT NULL
    );
    """,
    # 30: making days locks txn, then txn_move, before it makes or guards any partition, as a write
    # does (its trigger records the move in txn_move); so does the risk actors' follow, its first
    # statement (risk.actor). Made one by one, a txn_move partition first (its day's txn partition
    # there already, an earlier release's), the next day's txn partition waited on a write that
    # waited on the txn_move one, and PostgreSQL aborted one of them; guarded one by one, a
    # partition made by hand likewise. The days go as dates, whatever the caller's DateStyle, and
    # one made meanwhile by someone else is not made again.
    f"""
    SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);
    CREATE OR REPLACE FUNCTION journal_make_days(first_day date, last_day date) RETURNS SETOF text
        LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
    DECLARE
        day date;
        parent text;
        made text;
        parents text[] := '{{}}';
        names text[] := '{{}}';
        days date[] := '{{}}';
    BEGIN
{_MAKE_DAYS_CHECKS}        day := first_day;
        WHILE day <= last_day LOOP
            FOREACH parent IN ARRAY ARRAY['txn', 'txn_move'] LOOP
                made := parent || '_' || pg_catalog.to_char(day, 'YYYYMMDD');  -- schema.partition's name
                IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), made)) IS NULL THEN
                    parents := parents || parent;
                    names := names || made;
                    days := days || day;
                END IF;
            END LOOP;
            day := day + 1;
        END LOOP;
        IF pg_catalog.cardinality(names) > 0 OR EXISTS (  -- or a partition to guard
            SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent IN ('txn'::regclass, 'txn_move'::regclass)
                AND (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                 WHERE g.tgrelid = i.inhrelid AND g.tgname = 'journal_keeps_all')
                     OR (i.inhparent = 'txn'::regclass AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                         WHERE g.tgrelid = i.inhrelid AND g.tgname = 'txn_record_moves')))
        ) THEN  -- a write's order: txn, then txn_move
            EXECUTE pg_catalog.format('LOCK TABLE ONLY %I.txn, ONLY %I.txn_move IN ACCESS EXCLUSIVE MODE',
                pg_catalog.current_schema(), pg_catalog.current_schema());
        END IF;
        FOR i IN 1 .. pg_catalog.cardinality(names) LOOP
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), names[i])) IS NULL THEN
                EXECUTE pg_catalog.format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                    pg_catalog.current_schema(), names[i], pg_catalog.current_schema(), parents[i], days[i],
                    days[i] + 1);
                RETURN NEXT names[i];
            END IF;
        END LOOP;
        PERFORM journal_guard_partition(inhrelid::regclass) FROM pg_catalog.pg_inherits
            WHERE inhparent IN ('txn'::regclass, 'txn_move'::regclass);
    END $$;
    """,
    # 31: the guards read txn_state once a statement (the states a transaction is born in, or the
    # final ones, as an array each row is looked up in), not with an index scan for each row
    # written (27) or moved to a final state (18): the same checks and records, two index scans a
    # purchase fewer. A state not born is told unknown apart only when the statement fails.
    """
    SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);
    CREATE OR REPLACE FUNCTION txn_record_inserts() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        bad record;
    BEGIN
        SELECT i.state, i.rrn INTO bad FROM inserted i
            WHERE i.state <> ALL (ARRAY(SELECT state FROM txn_state WHERE born)) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            IF NOT EXISTS (SELECT 1 FROM txn_state WHERE state = bad.state) THEN
                RAISE EXCEPTION 'state % unknown (rrn %)', bad.state, bad.rrn USING ERRCODE = 'check_violation';
            END IF;
            RAISE EXCEPTION 'state % is not one a transaction is written in: it is written %, then moved (rrn %)',
                bad.state, (SELECT string_agg(state, ', ') FROM txn_state WHERE born), bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO txn_move (tx_date, rrn, from_state, to_state) SELECT tx_date, rrn, NULL, state FROM inserted;
        RETURN NULL;
    END $$;
    CREATE OR REPLACE FUNCTION txn_record_moves() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        bad record;
    BEGIN
        WITH moved AS (
            INSERT INTO txn_move (tx_date, rrn, from_state, to_state)
            SELECT n.tx_date, n.rrn, o.state, n.state
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            WHERE n.state IS DISTINCT FROM o.state
            RETURNING rrn, from_state, to_state
        )
        SELECT * INTO bad FROM moved
            WHERE (from_state, to_state) NOT IN (SELECT from_state, to_state FROM txn_state_move) LIMIT 1;
        IF FOUND THEN  -- the whole statement is undone
            RAISE EXCEPTION 'state move % -> % not allowed (rrn %)', bad.from_state, bad.to_state, bad.rrn
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO notice_outbox (tx_date, rrn, state, merchant_id, url)
            SELECT n.tx_date, n.rrn, n.state, n.merchant_id, coalesce(mo.notify_url, me.url)
            FROM old_rows o JOIN new_rows n USING (tx_date, terminal_id, stan, transmitted)
            LEFT JOIN merchant_order mo ON mo.rrn = coalesce(n.original_rrn, n.rrn)  -- a refund: its order's URL
            LEFT JOIN merchant_endpoint me ON me.merchant_id = n.merchant_id
            WHERE n.state IS DISTINCT FROM o.state AND n.txn_type IN ('purchase', 'refund')
              AND n.state = ANY (ARRAY(SELECT state FROM txn_state WHERE final))
              AND coalesce(mo.notify_url, me.url) IS NOT NULL
            ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$;
    """,
    # 32: when a batch asked for its statement, by the journal's clock (that of txn_move), so that
    # reconciliation tells a payment made final after the statement was cut from one final before.
    """
    ALTER TABLE recon_batch ADD COLUMN fetched_at timestamptz;
    """,
    # 33: four eyes on the live configuration (switch.console.changes): a change asked by one admin
    # waits here, the whole section as edited and the version it was edited from, until another
    # approves or rejects it; one waits per section at a time.
    """
    CREATE TABLE config_change (
        id         bigserial   PRIMARY KEY,
        section    text        NOT NULL,
        seen       bigint      NOT NULL,
        body       jsonb       NOT NULL,
        action     text        NOT NULL,
        target     text        NOT NULL,
        before     jsonb,
        after      jsonb,
        asked_by   text        NOT NULL,
        asked_at   timestamptz NOT NULL DEFAULT now(),
        decided_by text,
        decided_at timestamptz,
        outcome    text
    );
    CREATE UNIQUE INDEX config_change_waiting ON config_change (section) WHERE decided_at IS NULL;
    """,
    # 34: a kept section's version is never used twice, across sections and a section forgotten and
    # kept again, so that an edit (or a change waiting for approval) read at a version cannot be
    # kept over another body that happens to carry the same number.
    """
    CREATE SEQUENCE live_config_version;
    SELECT setval('live_config_version', coalesce(max(version), 0) + 1, false) FROM live_config;
    """,
    # 35: a change asked keeps a digest of the section it was edited from (the file's has no
    # version: an approval must not keep a stale copy of it), and the journal holds the decisions
    # to their rules: made once, never an approval by the one who asked, of a live section. Those
    # asked before the digest lapse.
    """
    ALTER TABLE config_change ADD COLUMN base text;
    UPDATE config_change SET decided_by = 'migration', decided_at = now(),
        outcome = 'lapsed: asked before changes kept what they were edited from' WHERE decided_at IS NULL;
    ALTER TABLE config_change
        ADD CONSTRAINT config_change_section
            CHECK (section IN ('merchants', 'terminals', 'routing', 'limits', 'rules')),
        ADD CONSTRAINT config_change_two_people CHECK (outcome IS DISTINCT FROM 'ok' OR decided_by <> asked_by);
    CREATE FUNCTION config_change_decided_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.decided_at IS NOT NULL THEN
            RAISE EXCEPTION 'change % was decided already', OLD.id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER config_change_decided_once BEFORE UPDATE ON config_change
        FOR EACH ROW EXECUTE FUNCTION config_change_decided_once();
    """,
    # 36: reconciliation looks items up by order or refund number (journal_elsewhere: the same row
    # on another statement, the journal's side in another batch), across every batch kept.
    """
    CREATE INDEX recon_item_by_number ON recon_item (out_trade_no, entry);
    """,
    # 37: the console reads what waits for a second person (a hand-back, a removal from the black
    # list) from the audit, by action and target, on every Dead letters and Risk page: the audit
    # keeps every action for good.
    # A black list entry's removal asked names the entry by its id, not by its value and time: one
    # removed and listed again is another entry, which no request made before names.
    """
    CREATE INDEX console_audit_by_target ON console_audit (action, target, id);
    ALTER TABLE risk_list ADD COLUMN id bigserial;
    CREATE UNIQUE INDEX risk_list_by_id ON risk_list (id);
    """,
    # 38: what retention did to a day (switch.journal.archive): dropped it, each table's SHA-256 as
    # archived (what a restore reads back must be the last drop's), or restored it (held from the
    # next drop for a while). Written by the owner alone (not the audit, to which the switch's role
    # adds), and kept as the journal's records are.
    """
    CREATE TABLE journal_retention (
        id              bigserial   PRIMARY KEY,
        day             date        NOT NULL,
        action          text        NOT NULL CHECK (action IN ('dropped', 'restored')),
        txn_sha256      text        NOT NULL,
        txn_move_sha256 text        NOT NULL,
        folder          text        NOT NULL,
        by_whom         text        NOT NULL,
        at              timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX journal_retention_by_day ON journal_retention (day, id);
    CREATE TRIGGER journal_retention_keeps_rows BEFORE UPDATE OR DELETE ON journal_retention
        FOR EACH ROW EXECUTE FUNCTION journal_keeps_rows();
    CREATE TRIGGER journal_retention_keeps_all BEFORE TRUNCATE ON journal_retention
        FOR EACH STATEMENT EXECUTE FUNCTION journal_keeps_rows();
    """,
    # 39: a settlement reads what came since its last run, not its history (switch.settlement): the
    # batches it has not yet settled whole, the items decided by a rule or a person (few: the
    # differences), and the moves after its last run's snapshot (a payment settled whose money went
    # back since). The moves' index of migration 17 serves.
    """
    ALTER TABLE recon_batch ADD COLUMN settled_at timestamptz;  -- every item of it due, and looked at
    CREATE INDEX recon_batch_unsettled ON recon_batch (day) WHERE settled_at IS NULL;
    CREATE INDEX recon_item_decided ON recon_item (batch_id) WHERE status IN ('FIXED', 'RESOLVED');
    CREATE TABLE settlement_mark (
        one        boolean     PRIMARY KEY DEFAULT true CHECK (one),  -- a single row
        day        date        NOT NULL,  -- the newest day settled: one before it is only read again
        seen_below xid8        NOT NULL,  -- that run's snapshot: the transactions from here on
        unseen     xid8[]      NOT NULL,  -- and those under way then, which it did not see
        at         timestamptz NOT NULL DEFAULT now()
    );
    """,
]


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the migrations not applied yet and write the state machine's tables, as the journal's
    owner; returns the journal's schema version (a later release's, if one migrated it). A role
    that is not its owner (the switch's, ``switch.journal.roles``) finds both current and writes
    nothing, or gets ``SchemaNotCurrent``. So does an earlier release on a journal a later one
    migrated, unless the later's machine allows every move of its own (it writes nothing then:
    the later's machine stands)."""
    try:
        version = await _current(conn)
        if version is not None:
            return version
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            if current > len(MIGRATIONS):  # a later release migrated it while this one waited for the lock
                return await _current(conn)
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            await sync_machine(conn)
            return max(current, len(MIGRATIONS))
    except asyncpg.InsufficientPrivilegeError as exc:
        user = await conn.fetchval("SELECT current_user")
        raise SchemaNotCurrent(
            f"role {user} may not read or bring the journal's schema and state machine to this release's "
            f"(version {len(MIGRATIONS)}): run this release's `paysw journal migrate` as the journal's owner ({exc})"
        ) from exc


async def _current(conn: asyncpg.Connection) -> int | None:
    """The journal's version if every migration is applied and the state machine's tables are
    ``machine``'s, or a later release's allowing every move of it; None if there is work for its
    owner. ``SchemaNotCurrent`` for a later release's machine that refuses one of ``machine``'s."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return None
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    if version < len(MIGRATIONS):
        return None
    states = {tuple(row) for row in await conn.fetch("SELECT state, final, description, born FROM txn_state")}
    pairs = {tuple(row) for row in await conn.fetch("SELECT from_state, to_state FROM txn_state_move")}
    if version == len(MIGRATIONS):
        return version if _machine_states() <= states and pairs == set(machine.PAIRS) else None
    meaning = {(state, final, born) for state, final, _, born in states}  # a later release may say it otherwise
    ours = {(state, final, born) for state, final, _, born in _machine_states()}
    if ours <= meaning and set(machine.PAIRS) <= pairs:
        return version
    raise SchemaNotCurrent(
        f"the journal is at schema version {version}, a later release's than this one's ({len(MIGRATIONS)}), "
        "and its state machine is not one this release can run on: run the later release"
    )


def _machine_states() -> set[tuple[str, bool, str, bool]]:
    return {(s.value, s in machine.FINAL, machine.DESCRIPTIONS[s], s is machine.BORN) for s in machine.State}


async def sync_machine(conn: asyncpg.Connection) -> None:
    """Write the state machine's tables from ``switch.journal.machine``: the states and the
    guard's allowed pairs."""
    await conn.executemany(
        "INSERT INTO txn_state (state, final, description, born) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (state) DO UPDATE SET final = EXCLUDED.final, description = EXCLUDED.description, "
        "born = EXCLUDED.born",
        sorted(_machine_states()),
    )
    await conn.execute("DELETE FROM txn_state_move")
    await conn.executemany("INSERT INTO txn_state_move VALUES ($1, $2)", machine.PAIRS)


def partition(parent: str, day: dt.date) -> str:
    """The name of ``parent``'s partition of ``day``."""
    return f"{parent}_{day:%Y%m%d}"


# A day's table of ``txn`` or ``txn_move`` by its name (``partition``): a partition, or one that
# retention detached and has yet to drop (``switch.journal.archive``), which the switch never names.
DAY_TABLE = "^txn(_move)?_[0-9]{8}$"


async def ensure_partitions(conn: asyncpg.Connection, first: dt.date, last: dt.date) -> list[str]:
    """Create the day partitions from ``first`` to ``last`` inclusive that do not exist yet, and
    guard every partition of ``txn`` and ``txn_move`` found without it (migration 25: one just
    made, or made by a front end of an earlier release, or attached by a person under any name);
    the names made. Gives up on a lock not had within 5 s rather than hold up the writers queued
    behind it. Done as the journal's owner, whichever role calls (migration 28)."""
    return [row[0] for row in await conn.fetch("SELECT journal_make_days($1, $2)", first, last)]


async def analyze_young(conn: asyncpg.Connection, days: list[dt.date], min_rows: int) -> list[str]:
    """ANALYZE each of ``days``' ``txn`` and ``txn_move`` partitions that holds ``min_rows`` changed
    rows or more and was never analyzed; their names. Without statistics the planner takes a day's
    partition for nearly empty: it joins each outcome batch to ``txn``'s by scanning every row of
    the day (measured: 301 rows read for one outcome), and a risk shard's look at the moves since
    its last (``risk.actor.follow``) reads every approval of the day in ``txn_move``'s (13 rows
    per purchase over the first 45 s of load). Autovacuum's first analyze comes up to a minute
    after the day's first rows: at 1,000 a second, scans of tens of thousands of rows by then."""
    names = [partition(parent, day) for parent in ("txn", "txn_move") for day in days]
    # As the journal's owner, whichever role calls (migration 28).
    return [row[0] for row in await conn.fetch("SELECT journal_analyze_young($1::text[], $2)", names, min_rows)]
