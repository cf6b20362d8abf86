"""Load a deployed potential (`fusionc.nn.export`) with torch and this runtime alone.

A deployed `.pt2` holds the exported energy-and-forces program (`torch.export.save`) or its
AOTInductor build (`torch._inductor.aoti_compile_and_package`), plus one extra entry,
`extra/fusionc.json`: the generated modules whose ops the program calls (`fusionc_<hash>::…`, with
their native CPU kernels) and the model's metadata (atomic numbers, cutoff, dtype). `load` imports
those modules first, so that their ops are registered before torch resolves the program's calls.
"""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import torch

EXTRA = "extra/fusionc.json"


def _archive_entry(archive: zipfile.ZipFile) -> str | None:
    for name in archive.namelist():
        if name == EXTRA or name.endswith("/" + EXTRA):
            return name
    return None


def add_extra(path: str | Path, payload: dict) -> None:
    """Append `payload` (JSON) to the `.pt2` archive at `path`, in its own folder."""
    with zipfile.ZipFile(path, "a") as archive:
        first = archive.namelist()[0]
        root = first.split("/")[0] + "/" if "/" in first else ""
        archive.writestr(root + EXTRA, json.dumps(payload))


def register_modules(sources: dict[str, str]) -> None:
    """Import generated modules from their text (by module name), registering their ops."""
    for name, text in sources.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__file__ = f"<deployed {name}>"
        sys.modules[name] = module
        try:
            exec(compile(text, module.__file__, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise


class Deployed:
    """A deployed potential: `deployed(positions, species, src, dst, shifts, batch)` gives the energy
    (1,) and the forces (atoms, 3) of one structure; `atomic_numbers` maps species indices to
    elements, `cutoff` is the radius its edges must come from (as `fusionc.nn.data.graph` makes them)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        with zipfile.ZipFile(path) as archive:
            entry = _archive_entry(archive)
            if entry is None:
                raise ValueError(f"{path} is not a deployed fusionc potential: it has no {EXTRA}")
            payload = json.loads(archive.read(entry))
            aoti = any("/aotinductor/" in name for name in archive.namelist())
        register_modules(payload["modules"])
        self.atomic_numbers: list[int] = payload["atomic_numbers"]
        self.cutoff: float = payload["cutoff"]
        self.dtype = getattr(torch, payload["dtype"])
        self.kind = "aotinductor" if aoti else "export"
        if aoti:
            self._run = torch._inductor.aoti_load_package(str(path))
        else:
            self._run = torch.export.load(str(path)).module()

    def __call__(self, positions, species, src, dst, shifts, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(positions, species, src, dst, shifts, batch)


def load(path: str | Path) -> Deployed:
    """The deployed potential at `path` (a `.pt2` that `fusionc.nn.export` wrote)."""
    return Deployed(path)
