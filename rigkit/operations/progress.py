"""
Commands whose output pyinfra shows at its default verbosity: rigkit's host tools print a
few throttled progress lines on stdout during a long step (a compile's percentage every few
seconds), which a user would otherwise see only with ``-vvv``, buried in every other command's
output.

pyinfra prints a command's output when ``state.print_output`` is set (``-vvv``), else only a
failed command's, after it ended. ``ProgressCommand`` runs one command as ``StringCommand``
does with printing on, each line as it arrives, behind the host's prefix (``[sandbox-1]
[rigkit] llama.cpp b11312 (82af735a2): 45% compiled (131s)``), on stderr like the rest of
pyinfra's log. The throttling is the host tool's: only commands that print little belong here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyinfra.api import StringCommand

if TYPE_CHECKING:
    from pyinfra.api.arguments import ConnectorArguments
    from pyinfra.api.host import Host
    from pyinfra.api.state import State


class ProgressCommand(StringCommand):
    """A ``StringCommand`` whose output lines pyinfra prints as they arrive, at any verbosity."""

    def execute(self, state: State, host: Host, connector_arguments: ConnectorArguments):
        connector_arguments.update(self.connector_arguments)
        return host.run_shell_command(self, print_output=True, print_input=state.print_input, **connector_arguments)
