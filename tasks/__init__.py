"""Luigi tasks, one module per stage.  Each task is thin: parameters, requires,
output and run, with the work delegated to the plain modules in ``sampler``.

Importing the package registers its default configuration (``tasks/luigi.cfg``)."""

from tasks.base import register_package_config

register_package_config()
