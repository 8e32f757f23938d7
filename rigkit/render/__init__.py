"""What rigkit writes onto hosts, as pure functions of host data: systemd units (through the
one escaping function in ``systemd``) and each engine's command line and client configs."""
