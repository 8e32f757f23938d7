# The two commands a newcomer needs:
#   make demo   set up, bring up a sandbox host, and deploy a verified llama-server on it
#               (the first run builds llama.cpp from source: minutes on 2 cores)
#   make test   set up and run every test, end-to-end ones included
# Both need root for the sandbox (nspawn hosts, network namespaces); run them as root or
# they use sudo.

PYTHON ?= python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := debootstrap systemd-container apt-cacher-ng iproute2 openssh-client git ccache vagrant
PYTEST_ARGS ?=

.PHONY: setup prereqs demo test sandbox-down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

prereqs:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

demo: setup prereqs
	$(SUDO) $(VENV)/bin/rigkit sandbox up --hosts 1
	$(SUDO) $(VENV)/bin/pyinfra -y inventories/sandbox.py deploys/rig.py
	$(SUDO) $(VENV)/bin/rigkit status inventories/sandbox.py

test: setup prereqs
	$(SUDO) $(VENV)/bin/pytest $(PYTEST_ARGS)

sandbox-down:
	$(SUDO) $(VENV)/bin/rigkit sandbox down

clean: sandbox-down
	rm -rf $(VENV) *.egg-info
