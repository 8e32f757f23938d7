"""
Which URLs rigkit fetches trust over: NVIDIA's keyring package and GPG key (installed as
root), the Hub and its token. Checked part by part (``urllib.parse.urlsplit``) against what
each part may be, rather than by one pattern over the whole string:

- the scheme ``https``; plain ``http`` only where the caller has an explicit, named opt-in
  (a LAN mirror), and then the caller pins what it fetches or sends no secret;
- a host name (letters, digits, ``-`` and ``.``, any case), an IPv4 address or a bracketed IPv6
  literal (``https://[fd00::1]:8443/...``), and an optional port;
- never a user name or password (``https://huggingface.co@evil.example`` goes to evil.example);
- a path of URL-safe characters, no ``..`` segment, no query or fragment.

Everything is ASCII: a look-alike letter or digit is refused, not normalised.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
PATH = re.compile(r"(?:/[A-Za-z0-9._~%+-]*)*", re.ASCII)
PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
LOOPBACK_NAMES = ("localhost",)


class UrlError(ValueError):
    """A URL rigkit will not fetch from; the message says what was expected instead."""


def check_url(url: object, *, allow_http: bool = False, opt_in: str = "") -> str:
    """``url`` when rigkit may fetch from it, else :class:`UrlError` naming what was expected
    (``opt_in``: the host-data key that allows plain ``http``, named in the refusal)."""
    if not isinstance(url, str) or not url:
        raise UrlError("a URL (a non-empty string)")
    if not url.isprintable():
        raise UrlError("a URL without control characters (no newlines or tabs)")
    if not url.isascii():
        raise UrlError("a URL of ASCII characters only (no look-alike letters or digits)")
    if " " in url:
        raise UrlError("a URL without spaces")
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced '[' in the host
        raise UrlError(f"a well-formed URL ({exc})") from None
    if parts.scheme not in schemes or not url.lower().startswith(parts.scheme + "://"):
        if parts.scheme == "http":
            raise UrlError(f"an https URL (plain http only with {opt_in or 'an explicit opt-in'})")
        raise UrlError("an https URL" + (" (or http, opted in)" if allow_http else ""))
    if "@" in parts.netloc:
        raise UrlError("a URL without a user name or password (no 'user@' or 'user:password@' before the host)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise UrlError("a URL without a query or fragment ('?', '#')")
    host, port = _split_netloc(parts.netloc)
    if not _host_ok(host):
        raise UrlError("a URL whose host is a name (letters, digits, '-', '.'), an IPv4 address or [IPv6 address]")
    if port is not None and not (PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise UrlError("a URL whose port is a number from 1 to 65535")
    if not PATH.fullmatch(parts.path) or ".." in parts.path.split("/"):
        raise UrlError("a URL whose path has letters, digits and . _ ~ % + - between '/' (no '..')")
    return url


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """(host, port or None); an IPv6 literal keeps its brackets."""
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return "", None
        return host, rest[1:] if rest else None
    host, sep, port = netloc.partition(":")
    return host, port if sep else None


def _host_ok(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(HOST_LABEL.fullmatch(label) for label in labels)


def is_loopback(url: str) -> bool:
    """The URL names this machine's loopback interface (``localhost``, 127.0.0.0/8, ``[::1]``):
    what is sent there does not leave the machine."""
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_carry_token(url: str) -> bool:
    """A secret (the Hub token) may go to ``url``: over https, or over plain http only to the
    loopback interface (a mirror on the same machine; the token never crosses a network)."""
    scheme = urlsplit(url).scheme
    return scheme == "https" or (scheme == "http" and is_loopback(url))
