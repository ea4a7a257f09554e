"""The switch application: TCP front end, routing, lifecycle, journal, configuration, CLI."""
