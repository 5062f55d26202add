"""Where selfid keeps things, and writing files so an interruption never leaves a half-written one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def selfid_home() -> Path:
    """The model cache: `$SELFID_HOME`, default `~/.cache/selfid`."""
    return Path(os.environ.get("SELFID_HOME") or "~/.cache/selfid").expanduser()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it is renamed to `final`.

    On any error (Ctrl-C included) the temporary folder is removed, so `final` either does not
    exist or is complete. An existing `final` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held for the block, so two processes don't build the same cache at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSONL text, split on line feeds only: JSON strings may hold a raw U+2028,
    U+2029 or U+0085, which `str.splitlines()` would wrongly break on. Blank lines are skipped."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield lineno, line


def read_jsonl(path: Path, what: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line of a JSONL file (`.gz` read transparently); a line that is not
    JSON is a SelfidError naming the file, the line and `what` to do about it."""
    from selfid.errors import SelfidError

    path = Path(path)
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SelfidError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in jsonl_lines(text):
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise SelfidError(f"{path}:{lineno}: not valid JSON ({e}){'; ' + what if what else ''}") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
