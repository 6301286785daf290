"""The names tasks/base.py held before it was split by concern, for one release.

New code imports from the module that holds each: tasks.configuration, tasks.parameters,
tasks.locks, tasks.task, tasks.freshness, tasks.worker_hooks.
"""

from tasks.configuration import QuietScheduling, flag, paths, register_package_config
from tasks.errors import PACKAGE_CONFIG, ConfigError
from tasks.freshness import RebuiltWhenInputsChange
from tasks.locks import lock_is_free, lock_path, output_lock
from tasks.parameters import (
    DIGEST_MARK,
    HIDDEN,
    CategoryListParameter,
    DataDirParameter,
    FromSection,
    ListParameter,
    SectionIntParameter,
    categories_digest,
    category_digest,
    category_source,
    category_stem,
    keyed_name,
    knob,
)
from tasks.task import ActionTask, SamplerTask
from tasks.worker_hooks import (
    Terminated,
    current_worker,
    fail_fast,
    reenable_disabled,
    say_no_luigid,
    stop_on_unschedulable,
    stop_whole_run_on_sigterm,
)

__all__ = [
    "DIGEST_MARK",
    "HIDDEN",
    "PACKAGE_CONFIG",
    "ActionTask",
    "CategoryListParameter",
    "ConfigError",
    "DataDirParameter",
    "FromSection",
    "ListParameter",
    "QuietScheduling",
    "RebuiltWhenInputsChange",
    "SamplerTask",
    "SectionIntParameter",
    "Terminated",
    "categories_digest",
    "category_digest",
    "category_source",
    "category_stem",
    "current_worker",
    "fail_fast",
    "flag",
    "keyed_name",
    "knob",
    "lock_is_free",
    "lock_path",
    "output_lock",
    "paths",
    "reenable_disabled",
    "register_package_config",
    "say_no_luigid",
    "stop_on_unschedulable",
    "stop_whole_run_on_sigterm",
]
