"""Which of some Debian packages are not installed, asked of dpkg for just those."""

from __future__ import annotations

from pyinfra.api import FactBase, QuoteString, StringCommand


class MissingPackages(FactBase[list]):
    """
    The ones of ``packages`` dpkg does not have installed (``ii``), in their order.

    .. code:: python

        host.get_fact(MissingPackages, packages=("cmake", "git"))  # ["cmake"]
    """

    def command(self, packages: tuple[str, ...]) -> StringCommand:
        # First what was asked, one per line, so that process() reads the answer alone.
        return StringCommand(
            "printf",
            QuoteString("%s\\n"),
            *(QuoteString(p) for p in packages),
            ";",
            "echo",
            "--",
            ";",
            "dpkg-query",
            "-W",
            "-f",
            QuoteString("${Package} ${db:Status-Abbrev}\\n"),
            *(QuoteString(p) for p in packages),
            "2>/dev/null",
            ";",
            "true",
        )

    def process(self, output: list[str]) -> list:
        split = output.index("--") if "--" in output else len(output)
        wanted = output[:split]
        installed = {f[0] for f in (line.split() for line in output[split + 1 :]) if len(f) > 1 and f[1] == "ii"}
        return [p for p in wanted if p not in installed]
