"""Why the journal's database cannot be used as it is, in words a person acts on: raised before a
command starts its work, and shown on one line by ``switch.cli``. Light to import."""


class JournalRefused(RuntimeError):
    """The journal's database cannot be used as it is; the message says what to do."""


class SchemaNotCurrent(JournalRefused):
    """The journal's schema, state machine or grants are not this release's, and the role
    connected may not bring them there (it is not the journal's owner)."""


class RoleRefused(JournalRefused):
    """The role named for the switch does not exist, or could undo the journal's guards itself."""
