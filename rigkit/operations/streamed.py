"""
A command whose output pyinfra shows as it comes, at its default verbosity, for the long
steps that report their own progress (a model download, an image build).

pyinfra prints a command's output live only at ``-v`` (``state.print_output``, handed by
``StringCommand.execute`` to the connector, which echoes each line with the host's prefix as
it arrives); at the default verbosity a long command shows nothing until it ends. A
``StreamedCommand`` asks the connector for that same live echo for itself alone, so no other
command gets louder. The programs run this way print a throttled progress line (every few
seconds at most) and nothing secret: what they print is what the deploy shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyinfra.api import StringCommand

if TYPE_CHECKING:
    from pyinfra.api.arguments import ConnectorArguments
    from pyinfra.api.host import Host
    from pyinfra.api.state import State


class StreamedCommand(StringCommand):
    """A ``StringCommand`` whose output lines are shown live, whatever the verbosity.

    .. code:: python

        yield StreamedCommand("python3", QuoteString(script), QuoteString(manifest), "2>&1")
    """

    def execute(self, state: State, host: Host, connector_arguments: ConnectorArguments) -> Any:
        connector_arguments.update(self.connector_arguments)
        return host.run_shell_command(
            self,
            print_output=True,
            print_input=state.print_input,
            **connector_arguments,
        )
