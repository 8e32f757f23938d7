# The two commands a newcomer needs:
#   make demo   set up, bring up a sandbox host, and deploy a verified llama-server on it
#               (the first run builds llama.cpp from source: minutes on 2 cores; later ones
#               fetch that build from the sandbox's build cache)
#   make test   set up and run every test, end-to-end ones included
#   make lint   the formatter, the linter and the type checker (CI runs it before the tests)
# Both need root for the sandbox (nspawn hosts, network namespaces); run them as root or
# they use sudo. They install only what they use: the Vagrantfile's check (tests/) runs
# where vagrant is installed and is skipped otherwise.

PYTHON ?= python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# What the build machine runs: python3-venv for the virtualenv, debootstrap + systemd-container for
# the hosts, apt-cacher-ng and git (daemon) for what they fetch, iproute2, ssh. The hosts install
# their own build tools (ccache included) through apt-cacher-ng. The demo uses no container
# engine: the Docker engine is only for the tests of the container engines (make test).
APT_PACKAGES := python3-venv debootstrap systemd-container apt-cacher-ng iproute2 openssh-client git
TEST_APT_PACKAGES := docker.io
PYTEST_ARGS ?=

.PHONY: setup prereqs test-prereqs demo test lint sandbox-address sandbox-down clean

$(VENV)/.installed: pyproject.toml | prereqs
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Installs the packages in $(1) that are missing.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

prereqs:
	$(call apt_install,$(APT_PACKAGES))

test-prereqs: prereqs
	$(call apt_install,$(TEST_APT_PACKAGES))

# The deploy uses the sandbox's own build cache: the first demo compiles llama.cpp and
# publishes it there, a later one (after sandbox-down, on a fresh host) fetches and verifies it.
demo: prereqs setup
	$(SUDO) $(VENV)/bin/rigkit sandbox up --hosts 1
	$(SUDO) env RIGKIT_SANDBOX_BUILD_CACHE=sandbox $(VENV)/bin/pyinfra -y inventories/sandbox.py deploys/rig.py
	$(SUDO) $(VENV)/bin/rigkit status inventories/sandbox.py

test: test-prereqs setup
	$(SUDO) $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The first sandbox host's address: curl -s http://$$(make -s sandbox-address):8000/health
sandbox-address:
	@$(SUDO) $(VENV)/bin/rigkit sandbox status | awk 'NR==1 && $$3 == "up" {print $$2; ok=1} \
		END {if (!ok) {print "no sandbox host is up: make demo" > "/dev/stderr"; exit 1}}'

sandbox-down:
	$(SUDO) $(VENV)/bin/rigkit sandbox down

clean: sandbox-down
	rm -rf $(VENV) *.egg-info
