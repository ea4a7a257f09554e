"""Ray actors: one class serves every channel, configured per channel and shard."""
