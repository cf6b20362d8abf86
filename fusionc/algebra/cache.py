"""An on-disk cache of JSON records: atomic writes, checksummed reads, rebuilt when corrupt."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    """`$FUSIONC_CACHE_DIR`, else `~/.cache/fusionc`."""
    root = os.environ.get("FUSIONC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "fusionc"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
