"""The operators' console (管理台): a web application of its own process (``paysw console
serve``), on its own listener, over the journal. Operators sign in (``accounts``); pages show
transactions and their timelines, channels, reconciliation, dead letters, settlement, merchants
and terminals (``reads``); actions go to the switch's admin endpoints (``channels``), to the
journal (reconciliation, notifications) and to the live configuration (``merchants``); each is
written to the audit log (``audit``). ``web`` holds the routes and who may do what."""
