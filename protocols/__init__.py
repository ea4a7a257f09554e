"""Wire formats and message types: pure code, no I/O, no global state."""
