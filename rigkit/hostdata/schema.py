"""
The rules every host-data component shares: the error that names host, key and what was
expected, a typed builder from plain dicts, and the checks a string passes before anything
renders it into a unit, a file or a command line.

Every string in host data is refused when it holds a control character (a newline would
end an ``ExecStart=`` line and start another directive); names and refs are matched whole
(``re.fullmatch``: ``$`` alone accepts a trailing newline); paths are absolute and
normalised (no ``..``, no ``//``, no trailing ``/``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from pathlib import PurePosixPath
from typing import Annotated, Any, Protocol, TypeVar, cast

from pyinfra.api.exceptions import PyinfraError

T = TypeVar("T")

#: A string of digits that host data may also give as an integer (``driver_branch: 580``,
#: ``cuda_arch: [86]``): the integer becomes its decimal string before the key's own check.
NUMERIC = "numeric text"
NumericText = Annotated[str, NUMERIC]

# C0 and C1 control characters and DEL; tabs and newlines included.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]", re.ASCII)

#: Where model directories and ``dest`` may be, unless the inventory names its own roots
#: (host data ``model_roots``, e.g. a home directory).
MODEL_ROOTS = ("/srv/models", "/data", "/mnt", "/models")
#: Never a model directory, ``dest`` or root, whatever the inventory says: the system's
#: directories (a container that mounts ``/var/run`` reaches ``docker.sock``) and rigkit's own.
SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt/rigkit",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/lib/rigkit",
    "/var/run",
)


class HostDataError(PyinfraError, ValueError):
    """Bad host data: says which host, which key, and what was expected."""

    def __init__(self, host: str, key: str, expected: str, got: Any = dataclasses.MISSING):
        self.host, self.key, self.expected = host, key, expected
        message = f"host {host}: {key}: expected {expected}"
        if got is not dataclasses.MISSING:
            message += f", got {got!r}"
        super().__init__(message)


class ServiceFields(Protocol):
    """What an engine's own checks read of a service (:class:`rigkit.hostdata.services.Service`,
    which names the engines: they name it by this shape instead)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def gpus(self) -> tuple[int, ...]: ...

    @property
    def extra_args(self) -> tuple[str, ...]: ...

    @property
    def options(self) -> object: ...


def check_text(value: str, host: str, key: str) -> str:
    """A string without control characters (newlines, tabs, escapes)."""
    bad = CONTROL.search(value)
    if bad:
        what = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(bad.group(), "a control character")
        raise HostDataError(
            host, key, f"text without control characters (it holds {what}, which could end a unit's line)", value
        )
    return value


def check_address(value: str, host: str, key: str, expected: str) -> str:
    """An IP address in its canonical form; an IPv4-mapped IPv6 address (``::ffff:0.0.0.0``)
    becomes the IPv4 address it is, so no check on the address can be passed by its spelling."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise HostDataError(host, key, expected, value) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_pattern(value: str, pattern: re.Pattern[str], host: str, key: str, expected: str) -> str:
    """``value`` matched whole by ``pattern``."""
    if not pattern.fullmatch(value):
        raise HostDataError(host, key, expected, value)
    return value


def check_path(value: str, host: str, key: str, what: str = "an absolute path on the host") -> str:
    """An absolute, normalised POSIX path: no ``..``, ``.``, ``//`` or trailing ``/``."""
    path = PurePosixPath(value)
    if not path.is_absolute() or str(path) != value or ".." in path.parts or value == "/":
        raise HostDataError(host, key, f"{what} (absolute and normalised: no '..', '//' or trailing '/')", value)
    return value


def is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_model_roots(value: Any, host: str, key: str = "model_roots") -> tuple[str, ...]:
    """Host data ``model_roots``: absolute directories models may live under (default
    :data:`MODEL_ROOTS`); none of them a system directory or inside one."""
    if value is None:
        return MODEL_ROOTS
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise HostDataError(host, key, "a non-empty list of absolute directories", value)
    roots = []
    for i, root in enumerate(value):
        if not isinstance(root, str) or not root:
            raise HostDataError(host, f"{key}[{i}]", "an absolute directory on the host", root)
        check_text(root, host, f"{key}[{i}]")
        check_path(root, host, f"{key}[{i}]", "an absolute directory on the host")
        if any(is_within(root, d) or is_within(d, root) for d in SYSTEM_DIRS):
            raise HostDataError(
                host, f"{key}[{i}]", "a directory that is no system directory, holds none and is not rigkit's own", root
            )
        roots.append(root)
    return tuple(roots)


def check_under_roots(value: str, roots: tuple[str, ...], host: str, key: str, what: str) -> str:
    """``value`` (already an absolute, normalised path) below one of ``roots`` and no system
    directory: what a root-run fetcher writes into, or a root container mounts."""
    if ":" in value:
        raise HostDataError(
            host,
            key,
            f"{what} path without ':' (docker -v and systemd's BindReadOnlyPaths= read it as a separator)",
            value,
        )
    if any(is_within(value, d) for d in SYSTEM_DIRS) or not any(is_within(value, r) for r in roots):
        raise HostDataError(
            host,
            key,
            f"{what} under one of the model roots ({', '.join(roots)}; host data model_roots names others), "
            "never a system directory",
            value,
        )
    return value


def build(cls: type[T], raw: Any, host: str, key: str) -> T:
    """Make a frozen dataclass from a dict, checking key names and value types; every string
    in it, nested ones included, is checked for control characters."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise HostDataError(host, key, f"a mapping of {cls.__name__} fields", raw)
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}  # a dataclass type, by contract
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise HostDataError(host, f"{key}.{unknown[0]}", f"one of the known keys ({', '.join(fields)})", "unknown key")
    return cls(**coerce_fields(cls, raw, host, key))


def coerce_fields(cls: type, raw: dict[str, Any], host: str, key: str) -> dict[str, Any]:
    """The values of ``raw`` for the fields of ``cls``, typed; required fields present."""
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise HostDataError(host, f"{key}.{f.name}", "a value (this key is required)")
            continue
        values[f.name] = coerce(raw[f.name], hints[f.name], host, f"{key}.{f.name}")
    return values


def coerce(value: Any, hint: Any, host: str, key: str) -> Any:
    if isinstance(hint, type) and hasattr(hint, "from_hostdata"):
        # A nested component that sorts its own keys (a router service's models).
        return hint.from_hostdata(value, host, key)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        if NUMERIC in hint.__metadata__ and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return coerce(value, args[0], host, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # e.g. int | tuple[int, ...]: the first that fits
            for option in inner:
                try:
                    return coerce(value, option, host, key)
                except HostDataError:
                    continue
            raise HostDataError(host, key, " or ".join(_describe(a) for a in inner), value)
        return coerce(value, inner[0], host, key)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise HostDataError(host, key, "a list", value)
        return tuple(coerce(v, args[0], host, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise HostDataError(host, key, "a mapping", value)
        return {coerce(k, args[0], host, f"{key}"): coerce(v, args[1], host, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HostDataError(host, key, "a number", value)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HostDataError(host, key, "an integer", value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise HostDataError(host, key, "true or false", value)
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise HostDataError(host, key, "a non-empty string", value)
        return check_text(value, host, key)
    return value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list"
    return {int: "an integer", float: "a number", str: "a non-empty string", bool: "true or false"}.get(hint, str(hint))
