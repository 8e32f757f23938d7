"""A system user and its group, read in one round trip (pyinfra's server.user reads every
user and group on the host)."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand


class SystemUser(FactBase[dict]):
    """
    ``{"home": ..., "shell": ..., "group": True}`` (``home`` None when the user does not
    exist; ``group``: a group of the same name exists).

    .. code:: python

        host.get_fact(SystemUser, user="llama-tiny")
    """

    def command(self, user: str) -> StringCommand:
        return StringCommand(
            "getent",
            "passwd",
            QuoteString(user),
            ";",
            "echo",
            "--",
            ";",
            "getent",
            "group",
            QuoteString(user),
            ";",
            "true",
        )

    def process(self, output: list[str]) -> dict:
        split = output.index("--") if "--" in output else len(output)
        passwd, group = "\n".join(output[:split]), "\n".join(output[split + 1 :])
        fields = passwd.strip().split(":")
        found = len(fields) >= 7
        return {
            "home": fields[5] if found else None,
            "shell": fields[6] if found else None,
            "group": bool(group.strip()),
        }
