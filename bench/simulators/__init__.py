"""Channel simulators: stand-ins for the five channels, one process each, speaking each
channel's real message shapes and signatures."""
