"""The kinds of parameter the sampler's tasks take, and the names made from their values.

A setting its section owns (``FromSection``: FetchFives' seed is SampleUrls'), a tuning
``knob`` (insignificant, hidden), list, data_dir and category-list parameters, and
``keyed_name``: a folder name unique to a task's significant settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, TypeVar

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.parameter import ParameterVisibility, _no_value

from sampler.categories.sets import parse_spec, read_preset
from sampler.categories.words import SynsetError, read_categories
from tasks.configuration import flag
from tasks.errors import ConfigError

HIDDEN = ParameterVisibility.HIDDEN
DIGEST_MARK = "#sha256="


class FromSection:
    """A parameter mixin: when this task's own flag and section say nothing, take the value
    of ``[section] name`` (its command-line flag, then luigi.cfg), then ``fallback``.

    FetchFives' ``seed`` is SampleUrls' ``seed``: ``--SampleUrls-seed 7`` sets both, and
    FetchFives passes it down, so the seed is part of FetchFives' identity too.
    """

    # luigi's private API (tests/test_luigi_private_api.py): ``_no_value`` (no fallback),
    # ``_value_iterator`` (where a parameter looks for its value, in order) and
    # ``_parser_global_dest`` (a flag's name in the parsed command line).
    def __init__(self, *args, section: str, name: str, fallback: object = _no_value, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._section, self._name, self._fallback = section, name, fallback

    def _value_iterator(self, task_name, param_name):  # luigi's (untyped) signature: a mixin of its Parameter
        # luigi takes an empty flag (`--paths-data-dir ''`) for an absent one and falls back
        # to luigi.cfg or the default: data_dir would silently become ./data, the category
        # set det200.  An empty value here is a mistake: say so.
        parser = CmdlineParser.get_instance()
        if parser is not None:
            for section, name in ((task_name, param_name), (self._section, self._name)):
                if getattr(parser.known_args, self._parser_global_dest(name, section), None) == "":
                    raise ConfigError(f"{flag(section, name)} is empty")
        yield from super()._value_iterator(task_name, param_name)
        if (task_name, param_name) != (self._section, self._name):
            yield from super()._value_iterator(self._section, self._name)
        yield (self._fallback, None)


P = TypeVar("P", bound="luigi.Parameter[Any]")


def knob(kind: type[P], default: Any, description: str | None = None) -> P:
    """A tuning knob: changes how a task works, never what it outputs.  Insignificant (not
    part of the task's identity) and hidden from luigid's UI; still a flag and a luigi.cfg
    option like any parameter."""
    return kind(default=default, significant=False, visibility=HIDDEN, description=description)


class SectionIntParameter(FromSection, luigi.IntParameter):
    pass


class ListParameter(luigi.ListParameter):
    """A list setting, written as a JSON list (``'["imagefolder", "webdataset"]'``) or as
    people type one: a bare word (``imagefolder``) or a comma-separated list (``a,b``).

    Items of a bare list are stripped; an item holding a comma needs the JSON form.  With
    ``item=int`` the items of a bare list are whole numbers (``0,320,160``).
    """

    def __init__(self, *args: Any, item: type = str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._item = item

    def parse(self, x: Any) -> Any:
        if isinstance(x, str) and not x.lstrip().startswith(("[", "(")):
            items = [item.strip() for item in x.split(",") if item.strip()]
            try:
                return tuple(self._item(item) for item in items)
            except ValueError as error:
                raise ValueError(f"expected a list of {self._item.__name__}s, not {x!r}") from error
        try:
            return super().parse(x)
        except ValueError as error:
            raise ValueError(
                f'{error}: expected a JSON list such as \'["a", "b"]\', or a,b (a word or a comma list)'
            ) from error


class DataDirParameter(FromSection, luigi.Parameter):
    """``data_dir``, absolute: the same folder named two ways is one identity, and the same
    relative name run from two folders is two."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("description", "Folder that holds every output (default: [paths] data_dir)")
        super().__init__(section="paths", name="data_dir", fallback="data", **kwargs)

    def normalize(self, x: str) -> str:
        if not str(x).strip():  # abspath("") is the current folder: every output loose in it
            raise ConfigError(f"{flag('paths', 'data_dir')} is empty")
        return os.path.abspath(os.path.expanduser(str(x)))


def categories_digest(categories: list) -> str:
    text = "".join(f"{c.wnid},{c.label}\n" for c in categories)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CategoryListParameter(FromSection, luigi.Parameter):
    """The category set, as ``<preset | under:<wnid> | absolute CSV path>#sha256=<digest>``.

    For a preset or a CSV the digest is that of the list's rows, so every task that depends
    on the list changes identity when the file is edited, not only when it is renamed.  A
    subtree (``under:<wnid>``) is resolved against the URL index by ParseSynsets, so its
    digest is that of the subtree's name.  The list is read (and its syntax checked) when the
    value is first normalised; values passed down through ``requires()`` already carry it.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault(
            "description",
            "A preset (det200, imagenette, imagewoof, mini-imagenet, imagenet-a, imagenet-r, ilsvrc2012), "
            "all (every synset with URLs), under:<wnid> (a WordNet subtree) or a CSV `wnid,label`",
        )
        super().__init__(section="ParseSynsets", name="categories", fallback="det200", **kwargs)

    def normalize(self, x: str) -> str:
        x = str(x)
        if DIGEST_MARK in x:
            return x
        try:
            spec = parse_spec(x)
            if spec.resolved_from_index:
                return f"{x.strip()}{DIGEST_MARK}{hashlib.sha256(x.strip().encode()).hexdigest()[:16]}"
            if spec.kind == "preset":
                return f"{spec.value}{DIGEST_MARK}{categories_digest(read_preset(spec))}"
            source = os.path.abspath(os.path.expanduser(x)) if os.path.exists(os.path.expanduser(x)) else x
            categories = read_categories(source)
        except (SynsetError, ValueError) as error:
            raise ConfigError(f"{flag('ParseSynsets', 'categories')}: {error}") from error
        return f"{source}{DIGEST_MARK}{categories_digest(categories)}"


def category_source(value: str) -> str:
    """The set part of a CategoryListParameter value: a preset, all, under:<wnid> or a CSV path."""
    return value.rpartition(DIGEST_MARK)[0] or value


def category_digest(value: str) -> str:
    return value.rpartition(DIGEST_MARK)[2]


def category_stem(value: str) -> str:
    """A readable name of the set: the preset, ``under-<wnid>``, or the CSV file's stem."""
    return parse_spec(category_source(value)).stem


def keyed_name(readable: str, significant: Mapping[str, Any]) -> str:
    """``<readable>-<digest>``: a folder name for an output, unique to its significant settings
    (as gokart's unique ids): two configurations never share a path, so an output's existence
    is its completeness."""
    text = json.dumps(dict(significant), sort_keys=True, separators=(",", ":"))
    return f"{readable}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
