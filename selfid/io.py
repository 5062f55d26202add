"""Where selfid keeps things, writing files so an interruption never leaves a half-written one, and
checking later that a folder selfid wrote is still what it wrote (`checksums.json`)."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from selfid.errors import SelfidError


def selfid_home() -> Path:
    """The model cache: `$SELFID_HOME`, default `~/.cache/selfid`."""
    return Path(os.environ.get("SELFID_HOME") or "~/.cache/selfid").expanduser()


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file: 0644 under the usual umask 022
DIR_MODE = 0o777 & ~_UMASK


def public_modes(root: Path) -> None:
    """Give `root` and everything under it the modes a plain open()/mkdir() would have.

    tempfile (and safetensors' writer) create files 0600 and folders 0700; a run's outputs should be as
    readable as the append-only logs beside them.
    """
    root = Path(root)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, DIR_MODE)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), FILE_MODE)
    else:
        os.chmod(root, FILE_MODE)


def check_can_create(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output path that could not be written when the work is done: a part of it is a
    file, or its nearest existing folder does not let this user create a folder in it (probed by creating and
    removing one: it also catches a read-only file system, where a root user's permissions would say yes)."""
    out = Path(out)
    parent = out  # the folder itself where it exists (files are written in it), else its nearest existing parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SelfidError(f"{option} {out}: {parent} is a file, not a folder: choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".selfid-probe-"))
    except OSError as e:
        raise SelfidError(f"{option} {out}: cannot write in {parent} ({e.strerror or e}): choose a folder you can "
                          "write to") from None


def check_out_folder(out: Path, writes: tuple[str, ...], ours: str, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file, or that holds files of the names a command writes
    there (`writes`) without its own record (`ours`: a previous output of the same command, which it may write
    again): the user's files are never replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SelfidError(f"{option} {out} is a file: give a folder")
    check_can_create(out, option)
    if out.is_dir() and not (out / ours).exists():
        taken = [name for name in writes if (out / name).exists()]
        if taken:
            raise SelfidError(f"{option} {out} already holds {', '.join(taken)}, which selfid did not write there and "
                              f"would replace: choose a new or empty {option}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder (synced), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
        public_modes(tmp)
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


# --- reading files a user gives: in bounded pieces, so a file without line feeds (or /dev/zero) cannot fill memory --

MAX_RECORD_BYTES = 16 << 20  # one JSONL record (one line) of training data, probes, logs
MAX_FILE_BYTES = 1 << 30  # a file read whole: a JSON array of records
MAX_SMALL_FILE_BYTES = 16 << 20  # a config, a manifest, an adapter's adapter_config.json
_PIECE = 1 << 20


def size_text(n: int) -> str:
    """A byte count as people write it: 16 MiB, 64 KiB, 300 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and not n % (1 << shift):
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def read_text_bounded(path: Path, limit: int | None = None, what: str = "a file") -> str:
    """The UTF-8 text of `path`, refused (a SelfidError naming the file and the limit) past `limit` bytes (default:
    MAX_SMALL_FILE_BYTES)."""
    path = Path(path)
    limit = limit or MAX_SMALL_FILE_BYTES
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SelfidError(f"{path} is larger than {size_text(limit)}, the most selfid reads as {what}: check that it "
                          "is the file you meant")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SelfidError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def text_lines(path: Path, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file (`.gz` read transparently); see `stream_lines`."""
    path = Path(path)
    if path.suffix == ".gz":
        opened = gzip.open(path, "rb")
    else:
        opened = open(path, "rb")
    with opened as f:
        yield from stream_lines(f, path, limit)


def stream_lines(f, name, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) of a binary stream (a file, stdin), read a piece at a time (whatever has arrived, so a pipe
    is answered line by line) and split on line feeds only (JSON strings may hold a raw U+2028, U+2029 or U+0085,
    which `str.splitlines()` would wrongly break on). Blank lines are skipped; a line longer than `limit` bytes is a
    SelfidError naming `name`, the line and the limit (default: MAX_RECORD_BYTES), raised before more than `limit`
    bytes of it are held."""
    limit = limit or MAX_RECORD_BYTES
    lineno, held = 1, bytearray()
    while piece := f.read1(_PIECE):
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            held += piece[start:end]
            yield from _line(name, lineno, held, limit)
            lineno, held, start = lineno + 1, bytearray(), end + 1
        held += piece[start:]
        if len(held) > limit:
            raise _too_long(name, lineno, limit)
    yield from _line(name, lineno, held, limit)


def _too_long(path: Path, lineno: int, limit: int):
    return SelfidError(f"{path}:{lineno}: a line longer than {size_text(limit)}, the most selfid reads as one record: "
                       "a JSONL file holds one record per line (is this the file you meant?)")


def _line(path: Path, lineno: int, raw: bytearray, limit: int) -> Iterator[tuple[int, str]]:
    if len(raw) > limit:
        raise _too_long(path, lineno, limit)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SelfidError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
    if line.strip():
        yield lineno, line


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSONL text already in memory, split on line feeds only (see `text_lines`)."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield lineno, line


def read_jsonl(path: Path, what: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line of a JSONL file (`.gz` read transparently), read in bounded pieces; a line
    that is not JSON is a SelfidError naming the file, the line and `what` to do about it."""
    for lineno, line in text_lines(Path(path)):
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise SelfidError(f"{path}:{lineno}: not valid JSON ({e}){'; ' + what if what else ''}") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- checksums.json: what a folder held when selfid wrote it --------------------------------------------

CHECKSUMS = "checksums.json"


def write_checksums(folder: Path) -> dict:
    """Record the size and sha256 of every file under `folder` in `folder/checksums.json` (write it last)."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    record = {"format": 1, "files": files}
    atomic_write_json(folder / CHECKSUMS, record)
    return record


def verify_checksums(folder: Path) -> str | None:
    """None when every file recorded in `folder/checksums.json` is still there with its size and sha256;
    else what is wrong, in one phrase. A folder without checksums.json (written elsewhere) passes."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CHECKSUMS} itself is damaged"
    for name, size, _ in entries:  # sizes first: a truncated file is found without reading anything
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        got = f.stat().st_size
        if got != size:
            return f"{name} has {got:,} bytes, {size:,} were written"
    for name, _, sha in entries:
        if sha256_file(folder / name) != sha:
            return f"{name} has changed since it was written: its sha256 differs"
    return None
