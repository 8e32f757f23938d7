#!/usr/bin/env python3
"""
Where the Hub token may go, on the host.  STDLIB ONLY: uploaded beside fetch_shards.py and
build_checkpoint.py, whose fetches (whole files, and ranges of a checkpoint's tensors) both
send it through :data:`OPENER`.

The token goes over https, or over plain http only to this host's loopback interface (the
rule rigkit.transport.may_carry_token applies on the deploying machine); a redirect (the Hub
sends LFS files to a CDN) keeps it only on the same origin, where it may still go.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``; a URL with user info or a bad port is its own origin."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return ("invalid", url, 0)
    if "@" in u.netloc:
        return ("userinfo", url, 0)
    return (u.scheme, (u.hostname or "").lower(), port)


def may_carry_token(url: str) -> bool:
    """https, or plain http to the loopback interface only."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        return True
    host = (u.hostname or "").lower()
    if u.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, keeping Range; the token (an unredirected header, which urllib does
    not copy onto a redirect) is put back only for the same origin."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        for k in list(new.headers):
            if k.lower() == "authorization":
                del new.headers[k]
        auth = req.unredirected_hdrs.get("Authorization")
        if auth and origin(newurl) == origin(req.full_url) and may_carry_token(newurl):
            new.add_unredirected_header("Authorization", auth)
        return new


OPENER = urllib.request.build_opener(TokenRedirect())
