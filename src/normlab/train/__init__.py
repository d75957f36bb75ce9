"""Training: the run's configuration, the engine, run directories and atomic files."""
