"""Luigi tasks, one module per stage.  Each task is thin: parameters, requires,
output and run, with the work delegated to the plain modules in ``sampler``."""
