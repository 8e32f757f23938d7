"""
The sandbox's first deploy: one apt package, one templated file, one systemd unit.

    pyinfra -y inventories/sandbox.py deploys/sample.py
"""

from pyinfra import host
from pyinfra.operations import apt, files, systemd

PORT = 8080

apt.packages(name="Install curl", packages=["curl"], update=True, cache_time=3600)

page = files.template(
    name="Render the sample page",
    src="files/sample/index.html.j2",
    dest="/srv/rigkit-hello/index.html",
    mode="644",
    create_remote_dir=True,
    host=host,
)

unit = files.template(
    name="Install rigkit-hello.service",
    src="files/sample/rigkit-hello.service.j2",
    dest="/etc/systemd/system/rigkit-hello.service",
    mode="644",
    port=PORT,
)

systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)

systemd.service(
    name="Enable and start rigkit-hello",
    service="rigkit-hello.service",
    running=True,
    enabled=True,
)

systemd.service(
    name="Restart rigkit-hello for its new unit",
    service="rigkit-hello.service",
    restarted=True,
    _if=unit.did_change,
)
