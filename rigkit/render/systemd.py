"""
The one way a value reaches a systemd unit: :func:`escape`; and a llama-server preset:
:func:`preset_value`. Every template rigkit renders
goes through :data:`templates`, whose ``finalize`` refuses any rendered value that holds a
control character, so no value can end a directive's line and start another.

systemd splits ``ExecStart=`` into words at whitespace, honours double quotes with C
escapes inside, expands ``%`` specifiers and ``$VAR`` environment references; ``escape``
undoes all of that for one word, so what systemd runs is exactly the argv rigkit meant.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from rigkit.hostdata.llama_server import PRESET_GLOBAL_SECTIONS, PRESET_SECTION, PRESET_VALUE

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters that need quoting inside a word: whitespace, quotes, backslash, ';' (a command
# separator when it stands alone) and the empty word.
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;]""")


class UnsafeValue(ValueError):
    """A value that cannot be written into a unit safely (a control character)."""


def escape(value: str, word: bool = True) -> str:
    """``value`` for a unit file: ``%`` doubled, ``$`` doubled (no environment expansion);
    with ``word`` (``ExecStart=`` words, ``Environment=`` assignments, paths) also quoted as
    one word where it holds whitespace, quotes, ``\\`` or ``;``. Control characters are
    refused, never escaped."""
    if CONTROL.search(value):
        raise UnsafeValue(f"control character in a unit value: {value!r}")
    value = value.replace("%", "%%")
    if not word:
        return value
    value = value.replace("$", "$$")
    if value and not _NEEDS_QUOTES.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def preset_value(value: str) -> str:
    """``value`` for a llama-server router preset (an INI file): written as it is, since the
    format has no quoting and no escape (rigkit.hostdata.llama_server.PRESET_VALUE says what
    it reads back whole); anything else is refused, never escaped."""
    if not PRESET_VALUE.fullmatch(value):
        raise UnsafeValue(f"not a value a llama-server preset holds whole: {value!r}")
    return value


def preset_section(name: str) -> str:
    """A model's id as a preset's section name (rigkit.hostdata.llama_server.PRESET_SECTION)."""
    if not PRESET_SECTION.fullmatch(name) or name in PRESET_GLOBAL_SECTIONS:
        raise UnsafeValue(f"not a section name a llama-server preset keeps as it is: {name!r}")
    return name


def exec_line(argv: list[str]) -> str:
    """An argv as the value of ``ExecStart=``."""
    return " ".join(escape(arg) for arg in argv)


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and CONTROL.search(value):
        raise UnsafeValue(f"control character in a rendered value: {value!r}")
    return value


templates = Environment(
    loader=PackageLoader("rigkit", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_finalize,
)
templates.filters["systemd"] = escape
templates.filters["systemd_text"] = lambda v: escape(v, word=False)
templates.filters["preset"] = preset_value
templates.filters["preset_section"] = preset_section
