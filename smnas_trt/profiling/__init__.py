"""profiling subsystem."""
