"""Derivative programs as tables for the Triton table kernel (`fusionc.runtime.table_kernel`): what
a generated module's `rt.TableProgram` holds, the table built from it, and the launcher. Needs
torch; triton is imported at the first launch."""

from __future__ import annotations

import os
import re
from math import prod

import torch

#: Labels kept (in `out`) and summed per einsum, at most.
KEPT = 4
SUMMED = 4
#: A table row's integers: kind, mask bits, coefficient, M, K, flags, (offset, home) of out, a, b,
#: per kept label (size, stride in out, a, b; the first varies fastest), per summed label (size,
#: stride in a, b).
WIDTH = 12 + 4 * KEPT + 3 * SUMMED
assert WIDTH == 40, "the table kernel's literals: a row's width, its kept labels from 12, its summed ones from 28"
EINSUM, GATHER, SCATTER, GATHER_ROWS, SCATTER_ROWS = 0, 1, 2, 3, 4
SHARED, SLOT, ROWS = 0, 1, 2
#: flags: the output lacks rows that an operand has (summed over rows); program 0 alone adds it;
#: from bit 4 on the number of kept labels, from bit 8 on that of summed ones
ROW_SUM, FIRST_ONLY, KEPT_SHIFT, SUMMED_SHIFT = 1, 2, 4, 8
#: Integers per statement in a `TableProgram`: form, mask bits, coefficient, three offsets.
FIELDS = 6
_HOMES = {"s": SHARED, "p": SLOT, "r": ROWS}


#: A form: `[!]OUT=A[*B] SIZES` (einsum; `!`: program 0 alone adds it), `gather|scatter INDEX NUMEL`
#: (weight sets) or `gather-rows|scatter-rows INDEX NUMEL SPACE` (rows of another space), INDEX and
#: SPACE where the frame holds the index's start and the other space's block.
#: A view is its home (`s` shared, `p` the instance's slot, `r` rows) and labels, `r.zab`; sizes
#: are label and size, `a16 b5`. A view's labels are its memory layout, the last contiguous.
_VIEW = re.compile(r"([spr])\.(\w*)")


def _einsum_row(form: str) -> tuple[list[int], list[int]]:
    """The table row of an einsum form, less its offsets (filled per statement): the integers
    after the offsets, and the homes of out, a, b."""
    first_only = form.startswith("!")
    equation, *sizes = form.lstrip("!").split()
    size = {s[0]: int(s[1:]) for s in sizes}
    out, operands = equation.split("=")
    views = [_VIEW.fullmatch(v).groups() for v in (out, *operands.split("*"))]
    if len(views) == 2:  # one operand: times the constant 1 (shared, offset 0, no labels)
        views.append(("s", ""))
    homes = [_HOMES[h] for h, _ in views]

    def strides(labels: str) -> dict[str, int]:
        own = labels.replace("z", "")
        return {c: prod(size[d] for d in own[k + 1:]) for k, c in enumerate(own)}

    stride = [strides(labels) for _, labels in views]
    out_labels = views[0][1].replace("z", "")
    kept = list(reversed(out_labels))  # the fastest varying first: out's contiguous label
    summed = [c for c in reversed(views[1][1] + views[2][1]) if c not in out_labels and c != "z"]
    summed = list(dict.fromkeys(summed))
    if len(kept) > KEPT or len(summed) > SUMMED:
        raise ValueError(f"form '{form}': more than {KEPT} kept or {SUMMED} summed labels")
    row_sum = "z" not in views[0][1] and any("z" in labels for _, labels in views[1:])
    tail = []
    for j in range(KEPT):
        c = kept[j] if j < len(kept) else None
        tail += [size[c], *(s.get(c, 0) for s in stride)] if c else [1, 0, 0, 0]
    for j in range(SUMMED):
        c = summed[j] if j < len(summed) else None
        tail += [size[c], stride[1].get(c, 0), stride[2].get(c, 0)] if c else [1, 0, 0]
    head = [prod(size[c] for c in kept), prod(size[c] for c in summed),
            ROW_SUM * row_sum + FIRST_ONLY * first_only + (len(kept) << KEPT_SHIFT) + (len(summed) << SUMMED_SHIFT)]
    return head + tail, homes


def _large_tiles() -> bool:
    """Whether the table kernel runs in tiles far larger than registers hold: under the Triton
    interpreter (TRITON_INTERPRET=1), where each tile operation costs tens of microseconds
    whatever its size, unless FUSIONC_TABLE_TILES=gpu asks for the GPU's tiles there too."""
    return os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("FUSIONC_TABLE_TILES") != "gpu"


def scatter_mode() -> str:
    """How the table kernel adds rows into another space's (a message into its receiver):
    `grouped` (the default), one launch over the receivers, each summing its rows in order
    (`fusionc.runtime.grouping`): the same bits every run; or `atomic`, one over the rows, each
    added with an atomic add: no grouping to make, sums in whatever order the GPU runs them.
    Chosen by FUSIONC_SCATTER."""
    mode = os.environ.get("FUSIONC_SCATTER", "grouped")
    if mode not in ("grouped", "atomic"):
        raise ValueError(f"FUSIONC_SCATTER must be 'grouped' or 'atomic', got {mode!r}")
    return mode


class TableProgram:
    """A program as its table (see the module's text), and the launcher that runs it.

    `widths`: per index space the columns of its rows' block (one space, None, without spaces);
    `rows_from`: per space the argument whose rows it counts; `row_inputs`: (argument, space,
    column, size) per input with rows; `flat_inputs`: (argument, offset, size) per tensor without
    rows (the weight, inputs without rows, constants), from offset 1 on; `outputs`: (space or -1
    without rows, column or slot offset, size); `indices`: (argument, its space, the space it
    points into or -1) per index input; `phases`: (space, first statement, count) per launch;
    `statements`: per statement its form, mask bits (-1: every call), coefficient (an index into
    `coefs`) and the offsets of its views (out, a, b; for a gather or a scatter out and source)."""

    def __init__(self, name: str, *, block_z: int, warps: int, max_registers: int, chunk: int, widths: tuple,
                 rows_from: tuple, flat: int, slots: int, row_inputs: tuple, flat_inputs: tuple, outputs: tuple,
                 indices: tuple, phases: tuple, forms: tuple[str, ...], statements: tuple[int, ...],
                 coefs: tuple[float, ...]) -> None:
        self.name, self.block_z, self.warps, self.max_registers, self.chunk = name, block_z, warps, max_registers, chunk
        self.widths, self.rows_from, self.flat, self.slots = widths, rows_from, flat, slots
        self.row_inputs, self.flat_inputs, self.outputs, self.indices = row_inputs, flat_inputs, outputs, indices
        self.phases, self.forms, self.statements, self.coefs = phases, forms, statements, coefs
        self._tables: dict[tuple, torch.Tensor] = {}
        #: per launch that adds rows into another space's, the index input it adds by (the frame
        #: position its form names: `fusionc.backends.triton_program.phases`)
        self.scatters: dict[int, int] = {}
        for k, (_, first, count) in enumerate(phases):
            words = forms[statements[first * FIELDS]].split()
            if count == 1 and words[0] == "scatter-rows":
                self.scatters[k] = (int(words[1]) - 3 * len(widths)) // 2

    def table(self) -> list[int]:
        """The kernel's table: WIDTH integers per statement."""
        rows = []
        parsed = {}
        for k in range(0, len(self.statements), FIELDS):
            form, when, coef, *offsets = self.statements[k:k + FIELDS]
            text = self.forms[form]
            if text.startswith(("gather", "scatter")):
                kind, index, numel, *other = text.split()
                if kind in ("gather", "scatter"):  # weight sets: shared or the instance's slot
                    row = [GATHER if kind == "gather" else SCATTER, when, coef, int(numel), int(index), 0,
                           offsets[0], SLOT if kind == "scatter" else ROWS, offsets[1],
                           ROWS if kind == "scatter" else (SLOT if offsets[1] >= self.flat else SHARED), 0, 0]
                else:  # rows of another space: where the frame has its block
                    row = [GATHER_ROWS if kind == "gather-rows" else SCATTER_ROWS, when, coef, int(numel), int(index),
                           int(other[0]), offsets[0], ROWS, offsets[1], ROWS, int(other[1]) if other[1:] else 0, 0]
                rows.append(row + [0] * (WIDTH - len(row)))
                continue
            if form not in parsed:
                parsed[form] = _einsum_row(text)
            tail, homes = parsed[form]
            views = [x for offset, home in zip(offsets, homes) for x in (offset, home)]
            rows.append([EINSUM, when, coef, *tail[:3], *views, *tail[3:]])
        return [x for row in rows for x in row]

    def _device_table(self, device: torch.device) -> torch.Tensor:
        key = ("table", device)
        if key not in self._tables:
            self._tables[key] = torch.tensor(self.table() or [0] * WIDTH, dtype=torch.int32, device=device)
        return self._tables[key]

    def _device_coefs(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = ("coefs", dtype, device)
        if key not in self._tables:
            self._tables[key] = torch.tensor(self.coefs, dtype=dtype, device=device)
        return self._tables[key]

    def __call__(self, args: tuple[torch.Tensor, ...], mask: int = -1) -> list[torch.Tensor]:
        """The program's outputs on `args` (its inputs, the weight, the constants), running the
        statements `mask` meets, launch by launch (`phases`)."""
        import triton
        import triton.language as tl

        from fusionc.runtime.grouping import groups
        from fusionc.runtime.table_kernel import table_kernel

        like = args[self.flat_inputs[0][0]]  # the weight
        rows = [args[a].shape[0] for a in self.rows_from]
        grouped = scatter_mode() == "grouped"
        programs = max(triton.cdiv(rows[space], self.block_z) for space, _, _ in self.phases) if self.phases else 1
        starts = [self.flat + programs * self.slots]
        for n, width in zip(rows, self.widths):
            starts.append(starts[-1] + n * width)
        buf = like.new_zeros(starts[-1])
        buf[0] = 1
        for a, offset, size in self.flat_inputs:
            buf[offset:offset + size] = args[a].reshape(-1)
        blocks = [buf[start:start + n * width].view(n, width) for start, n, width in zip(starts, rows, self.widths)]
        for a, space, column, size in self.row_inputs:
            blocks[space][:, column:column + size] = args[a]
        frame = [x for start, n, width in zip(starts, rows, self.widths) for x in (start, width, n)]
        values = []  # every index's values, then the groupings the launches read
        at = 0
        for a, _, points in self.indices:
            frame += [at, -1]
            values.append(args[a])
            at += args[a].numel()
        for k in sorted(set(self.scatters.values()) if grouped else ()):  # the groupings of the indices scattered by
            a, _, points = self.indices[k]
            frame[3 * len(rows) + 2 * k + 1] = at
            values.append(groups(args[a], rows[points]).to(like.device))
            at += values[-1].numel()
        idx = torch.cat(values) if values else torch.zeros(1, dtype=torch.int64, device=like.device)
        frame_t = torch.tensor(frame, dtype=torch.int64, device=like.device)
        table, coefs = self._device_table(like.device), self._device_coefs(like.dtype, like.device)
        dtype = tl.float64 if like.dtype == torch.float64 else tl.float32
        for k, (space, first, count) in enumerate(self.phases):
            in_groups = grouped and k in self.scatters
            if in_groups:  # over the rows it adds into: the space the index points into
                space = self.indices[self.scatters[k]][2]
            n = rows[space]
            if n:
                table_kernel[(triton.cdiv(n, self.block_z),)](
                    buf, idx, frame_t, table, coefs, first, count, n, mask, self.widths[space], self.slots,
                    starts[space], int(in_groups),
                    BLOCK_Z=self.block_z, CHUNK=self.chunk, DTYPE=dtype, LARGE=_large_tiles(),
                    num_warps=self.warps, maxnreg=self.max_registers)
        slots = buf[self.flat:starts[0]].view(programs, self.slots)
        return [blocks[space][:, start:start + size].clone() if space >= 0
                else slots[:, start - self.flat:start - self.flat + size].sum(0) for space, start, size in self.outputs]
