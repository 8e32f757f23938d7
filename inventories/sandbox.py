"""The local sandbox hosts that `sudo rigkit sandbox up` started (see README)."""

from rigkit.sandbox import pyinfra_hosts

sandbox = pyinfra_hosts()
