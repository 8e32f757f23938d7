"""System users of rigkit's services: one round trip to decide (see rigkit.facts.users)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from rigkit.facts.users import SystemUser

NOLOGIN = "/usr/sbin/nologin"


@operation()
def system_user(user: str, home: str):
    """
    A system user (and its group of the same name) with ``home`` (not created) and no login
    shell; an existing one gets that home and shell.

    .. code:: python

        users.system_user(user="llama-tiny", home="/var/lib/rigkit-llama-tiny")
    """
    found = host.get_fact(SystemUser, user=user)
    if found["home"] is None:
        group = ["-g", QuoteString(user)] if found["group"] else ["-U"]
        yield StringCommand("useradd", "-r", "-M", "-d", QuoteString(home), "-s", NOLOGIN, *group, QuoteString(user))
    elif found["home"] != home or found["shell"] != NOLOGIN:
        yield StringCommand("usermod", "-d", QuoteString(home), "-s", NOLOGIN, QuoteString(user))
    else:
        host.noop(f"user {user} exists")
