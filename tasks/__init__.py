"""Luigi tasks, one module per stage.  Each task is thin: parameters, requires,
output and run, with the work delegated to the plain modules in ``sampler``.

What every task shares, a module per concern: ``configuration`` (the package's luigi.cfg,
registered on import), ``parameters``, ``locks``, ``task`` (SamplerTask, ActionTask),
``freshness`` (RebuiltWhenInputsChange) and ``worker_hooks`` (luigi worker's event handlers,
registered on import).
"""

from tasks import worker_hooks  # noqa: F401  (registers SamplerTask's event handlers)
from tasks.configuration import register_package_config

register_package_config()
