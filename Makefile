# Everything installs from scratch: a fresh Debian 12 / Python 3.11 machine needs nothing beforehand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install install-test system-packages demo deploy test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "installing python3-venv"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test system-packages

# sshd (real OpenSSH server for the tests), gpg and puttygen (a real .ppk key); installed with apt when missing.
system-packages:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v gpg >/dev/null || missing="$$missing gnupg"; \
	command -v gpgconf >/dev/null || missing="$$missing gnupg"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	command -v puttygen >/dev/null || missing="$$missing putty-tools"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The demo needs only gpg (its sFTP server runs in-process).
demo: install
	@command -v gpg >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq gnupg; }
	$(VENV)/bin/ibreports demo

# Deploy the Prefect flows of prefect.yaml, then create the automations of automations.yaml
# (crashed-run detection, dead-man's switch; alerts to the config's [alerts] URLs).
# Needs PREFECT_API_URL (docs/prefect.md). PULL=from-git: every run clones the code from
# IBREPORTS_GIT_URL (default: this checkout's origin), branch IBREPORTS_GIT_BRANCH (default:
# the branch checked out here), for workers on other machines or in containers (docs/scale-out.md).
PULL ?= local-folder
deploy: install
ifeq ($(PULL),from-git)
	@url="$${IBREPORTS_GIT_URL:-$$(git remote get-url origin 2>/dev/null)}"; \
	branch="$${IBREPORTS_GIT_BRANCH:-$$(git rev-parse --abbrev-ref HEAD 2>/dev/null)}"; \
	[ -n "$$url" ] || { echo "PULL=from-git needs the repository URL: set IBREPORTS_GIT_URL (this checkout has no origin)." >&2; exit 2; }; \
	sed 's/^pull: \*local-folder$$/pull: *from-git/' prefect.yaml > $(VENV)/prefect.from-git.yaml; \
	echo "deploying with code from $$url ($$branch)"; \
	IBREPORTS_GIT_URL="$$url" IBREPORTS_GIT_BRANCH="$$branch" \
	  $(VENV)/bin/prefect deploy --all --no-prompt --prefect-file $(VENV)/prefect.from-git.yaml
else ifeq ($(PULL),local-folder)
	IBREPORTS_HOME=$(CURDIR) $(VENV)/bin/prefect deploy --all --no-prompt
else
	@echo "PULL must be local-folder or from-git (got '$(PULL)')." >&2; exit 2
endif
	IBREPORTS_HOME=$(CURDIR) $(PY) -m flows.automations

# The full suite, the kill -9 crash campaign included (what CI runs).
test: install-test
	$(PY) -m pytest -q

# Everything but the crash campaign, for quick local iterations.
test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

bench: install-test
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
