"""space subsystem."""
