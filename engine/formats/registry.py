"""The label formats the command line (and later the app) offers, by name.

Each :class:`LabelFormat` names a reader, a writer, or both, and the options each takes; the CLI
builds its ``import FORMAT`` / ``export FORMAT`` flags from ``options`` (``--some-name`` for the
option ``some_name``) and passes the values as keyword arguments.  The contract:

- ``read(src: Path, *, classes: list[LabelClass] | None, **options) -> ImportSource``: ``classes`` is
  the target folder's class list when it has one (a reader may extend it or map names into it);
  nothing is written; a source that cannot be read at all raises :class:`FormatError` (one line).
  :func:`engine.formats.importer.import_source` then writes it (status and overwrite are the
  import's own options, not the format's).
- ``write(store, out: Path, *, progress, cancel, include_prelabeled, confirmed_only, **options)
  -> ExportReport``: ``store`` is open (read-only is enough); refusals raise :class:`FormatError`.

Formats register themselves by calling :func:`register` when their module is imported;
:data:`LABEL_FORMATS` imports the known modules on first use, so importing this module stays cheap.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

__all__ = ["FormatOption", "LabelFormat", "LABEL_FORMATS", "register", "label_format"]

# Modules that define formats; each calls register() at import.  A module missing here (another
# format still being written) is simply not offered.
_MODULES = ("voc", "masks", "cityscapes", "coco", "labelme")


@dataclass(frozen=True)
class FormatOption:
    name: str                                  # keyword argument name; the CLI flag is --name-with-dashes
    help: str
    type: Callable[[str], Any] | None = str    # None: a flag (store_true); default then False
    default: Any = None
    choices: tuple[Any, ...] | None = None
    for_import: bool = True                    # offered by `import FORMAT`
    for_export: bool = False                   # offered by `export FORMAT`

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class LabelFormat:
    name: str
    summary: str                               # one line for --help
    read: Callable[..., Any] | None = None     # (src, *, classes, **options) -> ImportSource
    write: Callable[..., Any] | None = None    # (store, out, *, progress, cancel, **options) -> ExportReport
    options: tuple[FormatOption, ...] = ()
    src_help: str = "the dataset to import"    # what SRC is, for --help

    def import_options(self) -> tuple[FormatOption, ...]:
        return tuple(o for o in self.options if o.for_import)

    def export_options(self) -> tuple[FormatOption, ...]:
        return tuple(o for o in self.options if o.for_export)


_FORMATS: dict[str, LabelFormat] = {}
_loaded = False


def register(fmt: LabelFormat) -> LabelFormat:
    """Add (or replace) a format under its name; returns it, so a module can keep a reference."""
    _FORMATS[fmt.name] = fmt
    return fmt


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":  # a real missing dependency must be seen
                raise


class _Registry(Mapping[str, LabelFormat]):
    """A read-only view of the registered formats, loaded on first use, in registration order."""

    def __getitem__(self, name: str) -> LabelFormat:
        _load()
        return _FORMATS[name]

    def __iter__(self) -> Iterator[str]:
        _load()
        return iter(list(_FORMATS))

    def __len__(self) -> int:
        _load()
        return len(_FORMATS)


LABEL_FORMATS: Mapping[str, LabelFormat] = _Registry()


def label_format(name: str) -> LabelFormat:
    """The format called ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return LABEL_FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown label format {name!r}; known: {', '.join(LABEL_FORMATS)}") from None
