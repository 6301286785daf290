"""Luigi's configuration, as the sampler registers it.

The package's own ``tasks/luigi.cfg`` is registered on import *below* luigi's usual files, so
the pipeline behaves the same from any folder; the folder's ``luigi.cfg`` and
``LUIGI_CONFIG_PATH`` still override it.  Two log filters and ``[paths] data_dir`` go with it.
"""

from __future__ import annotations

import logging

import luigi
import luigi.configuration
import luigi.interface

from tasks.errors import PACKAGE_CONFIG, ShortErrors, setting

log = logging.getLogger("luigi-interface")


def register_package_config() -> None:
    """Put the package's luigi.cfg first in luigi's list of config files (lowest priority).

    luigi reads /etc/luigi/luigi.cfg, then ./luigi.cfg, then LUIGI_CONFIG_PATH, each
    overriding the one before; ``add_config_path`` would append ours last, above them all.
    """
    parser = luigi.configuration.LuigiConfigParser
    path = str(PACKAGE_CONFIG)
    # luigi's private API (tests/test_luigi_private_api.py): the class list of config files
    # (``_config_paths``) and the parser read from them, if any yet (``_instance``); no public
    # call puts a file *first*.
    if path in parser._config_paths:
        return
    parser._config_paths.insert(0, path)
    if parser._instance is not None:  # already read: read every file again, in order
        parser.reload()
    for kind in (QuietScheduling, ShortErrors):
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())
    # luigi.rpc reads [core] rpc_retry_attempts/rpc_retry_wait/rpc_connect_timeout with
    # config.get*, not as parameters of its [core] class, which then warns that they are
    # "not consumed".  They are: tell the class so.  (``ignore_unconsumed`` is read by
    # luigi.Task's parameter lookup: tests/test_luigi_private_api.py.)
    core = luigi.interface.core
    core.ignore_unconsumed = set(core.ignore_unconsumed) | {
        "rpc_retry_attempts",
        "rpc_retry_wait",
        "rpc_connect_timeout",
    }


class QuietScheduling(logging.Filter):
    """Drop luigi's "Informed scheduler that task X has status Y" lines (one per task and
    change of state: hundreds for 200 categories); each task's running/done/failed line
    and the execution summary stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO and str(record.msg).startswith("Informed scheduler that task")
        )


def flag(section: str, name: str) -> str:
    """The setting as the user gave it: its flag, or the config file that set it (tasks.errors)."""
    return setting(section, name)


class paths(luigi.Config):  # lower case: luigi maps the class name to the [paths] section
    data_dir = luigi.Parameter(default="data", description="Folder that holds every output of the pipeline")
