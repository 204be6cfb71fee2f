"""report subsystem."""
