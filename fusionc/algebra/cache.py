"""An on-disk cache of JSON records: atomic writes, checksummed reads, rebuilt when corrupt."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    """`$FUSIONC_CACHE_DIR`, else `~/.cache/fusionc`."""
    root = os.environ.get("FUSIONC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "fusionc"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    Only a regular file, or a missing one, is replaced, by renaming a finished temporary file over
    it. A device or a FIFO is written through, as any program writing to it would (renaming over
    /dev/null would make it a regular file); a symbolic link is followed, so that the file it
    points at gets the data and the link stays a link.
    """
    target = Path(os.path.realpath(path))
    try:
        mode: int | None = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(target, "wb") as f:
            f.write(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    # created as open() creates a file (0o666 less the umask), not mkstemp's 0o600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:  # the replaced file keeps its permissions
                os.fchmod(f.fileno(), stat.S_IMODE(mode))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_or_build(path: Path, build: Callable[[], Any]) -> Any:
    """The payload stored at `path` if its checksum holds; else `build()`, stored atomically."""
    try:
        record = json.loads(path.read_text())
        if record["sha256"] == _digest(record["payload"]):
            return record["payload"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    payload = build()
    record = {"sha256": _digest(payload), "payload": payload}
    try:
        atomic_write(path, json.dumps(record, sort_keys=True).encode())
    except OSError:
        pass  # a read-only cache only costs recomputation
    return payload
