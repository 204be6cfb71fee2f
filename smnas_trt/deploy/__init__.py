"""deploy subsystem."""
