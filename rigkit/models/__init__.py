"""The model supply chain: the Hub client (``hub``), the model lock (``lockfile``) and the
LAN mirror that serves the Hub's download API (``mirror``)."""
