"""predictors subsystem."""
