"""The Triton kernel that runs every derivative program: one kernel, written once, that interprets a
program's table of statements (`fusionc.runtime.tables` builds the tables and launches it,
`fusionc.backends.triton_program` writes what they are built from).

A generated module holds no derivative kernel code, only each program's `TableProgram`: where its
tensors live, its *forms* (a statement's views, labels and sizes, as text) and, per statement, its
form, mask bits, coefficient and where its views start. The code does not grow with a diagram, and
compiling ahead of time (`fusionc compile --target`) compiles this one kernel per target.

Storage, per call: one buffer `buf` holds, in order, the constant 1 (the second factor of a
statement with one operand), the weight, the inputs without rows and the constants (`S`
elements); then one slot of `slots` elements per program instance, for what the program writes
without rows (recoupled weights, partial weight gradients); then every tensor with rows (inputs,
outputs, temporaries) as columns of an (n, R) block. A view is a home (shared, slot, rows) and an
offset, and an einsum statement `out += c · a · b` is, per row, a product over its kept labels
(those of `out`, flattened into M) and its summed ones (flattened into K): each program instance
takes `BLOCK_Z` rows and steps through M and K in tiles whose shape it picks by M and K, decoding
each tile index into labels and addresses with the strides the table gives. A tile holds 2,048
elements with 16 rows (M × K: 64 × 1 or 128 × 1, 32 × 4, 16 × 8, 8 × 16): with 4,096 it spilled on
sm_80. Under the Triton interpreter (`LARGE`) tiles are 256 × 8, where an operation costs about the
same whatever its size. A statement's output
without rows sums the rows (a weight gradient: each instance's partial sum in its own slot, the
launcher adds the slots) or, where no operand has rows, takes one. A barrier after each statement
makes its writes visible to the whole instance. A gather reads each row's weight set by its index;
a scatter adds rows into their sets one row after another (deterministic, no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: The table's layout (`fusionc.runtime.tables`): a row of 40 integers per statement, its kept labels
#: from 12 on (4 of 4 each), its summed ones from 28 on (4 of 3 each); homes 0 shared, 1 slot, 2 rows.


@triton.jit
def _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z: tl.constexpr, BM: tl.constexpr,
            BK: tl.constexpr, DTYPE: tl.constexpr):
    """out += coef · a · b on this instance's rows, in tiles of BLOCK_Z × BM × BK: the kept labels
    flattened into M (the first varies fastest), the summed ones into K, each tile index decoded
    into labels and offsets with the sizes and strides of the table row at t. Its loops over labels
    run as many times as the statement has (an interpreted statement costs per operation)."""
    big_m = tl.load(t + 3)
    big_k = tl.load(t + 4)
    flags = tl.load(t + 5)
    # each view's start per row: on the rows (home 2), in this instance's slot (1), shared (0)
    out_home = tl.load(t + 7)
    a_home = tl.load(t + 9)
    b_home = tl.load(t + 11)
    rowed = rowbase + zrow
    out0 = tl.load(t + 6) + tl.where(out_home == 2, rowed, tl.where(out_home == 1, slot, zrow * 0))
    a0 = tl.load(t + 8) + tl.where(a_home == 2, rowed, tl.where(a_home == 1, slot, zrow * 0))
    b0 = tl.load(t + 10) + tl.where(b_home == 2, rowed, tl.where(b_home == 1, slot, zrow * 0))
    out_rows = out_home == 2
    rows = row_mask.to(tl.int32)
    a_mask = (rows + (a_home != 2).to(tl.int32)) > 0  # every row reads a view without rows
    b_mask = (rows + (b_home != 2).to(tl.int32)) > 0
    first = (tl.arange(0, BLOCK_Z) == 0).to(tl.int32)
    # an output without rows: the sum over rows where an operand has them, else one row's value
    take = tl.where((flags & 1) != 0, rows, first).to(DTYPE)
    adds = ((pid == 0) | ((flags & 2) == 0)).to(tl.int32)  # program 0 alone adds a full value to a partial sum
    store_rows = tl.where(out_rows, rows, first * adds) > 0
    kept = (flags >> 4) & 15
    summed = (flags >> 8) & 15
    for m0 in range(0, big_m, BM):
        m = m0 + tl.arange(0, BM)
        rem = m
        om = m * 0
        am = m * 0
        bm = m * 0
        for j in range(kept):
            size = tl.load(t + 12 + 4 * j)
            digit = rem % size
            rem = rem // size
            om += digit * tl.load(t + 13 + 4 * j)
            am += digit * tl.load(t + 14 + 4 * j)
            bm += digit * tl.load(t + 15 + 4 * j)
        acc = tl.zeros([BLOCK_Z, BM], dtype=DTYPE)
        for k0 in range(0, big_k, BK):
            k = k0 + tl.arange(0, BK)
            rem_k = k
            ak = k * 0
            bk = k * 0
            for j in range(summed):
                size_k = tl.load(t + 28 + 3 * j)
                digit_k = rem_k % size_k
                rem_k = rem_k // size_k
                ak += digit_k * tl.load(t + 29 + 3 * j)
                bk += digit_k * tl.load(t + 30 + 3 * j)
            tile = (m < big_m)[None, :, None] & (k < big_k)[None, None, :]
            a = tl.load(buf + a0[:, None, None] + am[None, :, None] + ak[None, None, :],
                        mask=a_mask[:, None, None] & tile, other=0.0)
            b = tl.load(buf + b0[:, None, None] + bm[None, :, None] + bk[None, None, :],
                        mask=b_mask[:, None, None] & tile, other=0.0)
            acc += tl.sum(a * b, axis=2)
        value = tl.where(out_rows, acc, tl.sum(acc * take[:, None], axis=0)[None, :])
        q = buf + out0[:, None] + om[None, :]
        keep = store_rows[:, None] & (m < big_m)[None, :]
        tl.store(q, tl.load(q, mask=keep, other=0.0) + value * coef, mask=keep)


@triton.jit
def table_kernel(buf, idx, frame, table, coefs, first, count, n, mask, width, slots, rowbase, grouped,
                 BLOCK_Z: tl.constexpr, CHUNK: tl.constexpr, DTYPE: tl.constexpr, LARGE: tl.constexpr):
    """Runs statements first..first+count-1 of a program's table on BLOCK_Z rows per program
    instance: rows of the launch's space (its block at rowbase, `width` columns, n rows)."""
    pid = tl.program_id(0)
    z = pid.to(tl.int64) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_mask = z < n
    zrow = z * width
    slot = pid.to(tl.int64) * slots  # this instance's slot: a slot view's offset counts from the first's
    for r in range(first, first + count):
        t = table + r * 40  # WIDTH
        kind = tl.load(t)
        if (tl.load(t + 1) & mask) != 0:
            coef = tl.load(coefs + tl.load(t + 2)).to(DTYPE)
            # each kind's locals have names of their own: Triton asks a name that both branches of an
            # `if` define to have one type in both
            if kind == 0:
                big_m = tl.load(t + 3)
                big_k = tl.load(t + 4)
                if LARGE:
                    _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 256, 8, DTYPE)
                elif big_k == 1:
                    if big_m <= 64:
                        _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 64, 1, DTYPE)
                    else:
                        _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 128, 1, DTYPE)
                elif big_k <= 4:
                    _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 32, 4, DTYPE)
                elif big_k <= 8:
                    _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 16, 8, DTYPE)
                else:
                    _einsum(buf, t, coef, pid, row_mask, zrow, slot, rowbase, BLOCK_Z, 8, 16, DTYPE)
            elif kind == 1:  # gather: out (rows) += source[index[z]], a weight set by its index
                numel_g = tl.load(t + 3)
                k_set_g = tl.load(idx + tl.load(frame + tl.load(t + 4)) + z, mask=row_mask, other=0)
                out0_g = tl.load(t + 6) + rowbase + zrow
                source0_g = tl.load(t + 8) + tl.where(tl.load(t + 9) == 1, slot, 0)
                for c0_g in range(0, numel_g, CHUNK):
                    cols_g = c0_g + tl.arange(0, CHUNK)
                    keep_g = row_mask[:, None] & (cols_g < numel_g)[None, :]
                    v_g = tl.load(buf + source0_g + k_set_g[:, None] * numel_g + cols_g[None, :], mask=keep_g, other=0.0)
                    q_g = buf + out0_g[:, None] + cols_g[None, :]
                    tl.store(q_g, tl.load(q_g, mask=keep_g, other=0.0) + v_g * coef, mask=keep_g)
            elif kind == 2:  # scatter: out (sets, no rows) += each row into its index's set, one row after another
                numel_s = tl.load(t + 3)
                index_s = tl.load(frame + tl.load(t + 4))
                out0_s = tl.load(t + 6) + slot
                source0_s = tl.load(t + 8) + rowbase
                for rz_s in range(BLOCK_Z):
                    zz_s = pid.to(tl.int64) * BLOCK_Z + rz_s
                    if zz_s < n:
                        k_set_s = tl.load(idx + index_s + zz_s)
                        for c0_s in range(0, numel_s, CHUNK):
                            cols_s = c0_s + tl.arange(0, CHUNK)
                            keep_s = cols_s < numel_s
                            v_s = tl.load(buf + source0_s + zz_s * width + cols_s, mask=keep_s, other=0.0)
                            q_s = buf + out0_s + k_set_s * numel_s + cols_s
                            tl.store(q_s, tl.load(q_s, mask=keep_s, other=0.0) + v_s * coef, mask=keep_s)
                    tl.debug_barrier()  # threads holding copies of one element: the next row reads what all stored
            elif kind == 3:  # gather rows: out (rows) += row index[z] of a tensor of another space
                numel_r = tl.load(t + 3)
                other_r = tl.load(t + 5)
                k_row_r = tl.load(idx + tl.load(frame + tl.load(t + 4)) + z, mask=row_mask, other=0)
                source0_r = tl.load(frame + other_r) + k_row_r * tl.load(frame + other_r + 1) + tl.load(t + 8)
                out0_r = tl.load(t + 6) + rowbase + zrow
                for c0_r in range(0, numel_r, CHUNK):
                    cols_r = c0_r + tl.arange(0, CHUNK)
                    keep_r = row_mask[:, None] & (cols_r < numel_r)[None, :]
                    v_r = tl.load(buf + source0_r[:, None] + cols_r[None, :], mask=keep_r, other=0.0)
                    q_r = buf + out0_r[:, None] + cols_r[None, :]
                    tl.store(q_r, tl.load(q_r, mask=keep_r, other=0.0) + v_r * coef, mask=keep_r)
            else:  # scatter rows: row index[z] of a tensor of another space += row z
                numel_a = tl.load(t + 3)
                position_a = tl.load(t + 4)
                into_a = tl.load(t + 5)
                from_a = tl.load(t + 10)
                if grouped != 0:  # launched over the rows added into: each sums its rows in row order
                    groups_a = tl.load(frame + position_a + 1)
                    order_a = groups_a + tl.load(frame + into_a + 2) + 1
                    begin_a = tl.load(idx + groups_a + z, mask=row_mask, other=0)
                    end_a = tl.load(idx + groups_a + z + 1, mask=row_mask, other=0)
                    most_a = tl.max(end_a - begin_a, axis=0)
                    out0_a = tl.load(t + 6) + rowbase + zrow
                    for c0_a in range(0, numel_a, CHUNK):
                        cols_a = c0_a + tl.arange(0, CHUNK)
                        keep_a = row_mask[:, None] & (cols_a < numel_a)[None, :]
                        acc_a = tl.zeros([BLOCK_Z, CHUNK], dtype=DTYPE)
                        for e_a in range(0, most_a):
                            live_a = row_mask & (begin_a + e_a < end_a)
                            zz_a = tl.load(idx + order_a + begin_a + e_a, mask=live_a, other=0)
                            source0_a = tl.load(frame + from_a) + zz_a * tl.load(frame + from_a + 1) + tl.load(t + 8)
                            acc_a += tl.load(buf + source0_a[:, None] + cols_a[None, :],
                                             mask=live_a[:, None] & keep_a, other=0.0)
                        q_a = buf + out0_a[:, None] + cols_a[None, :]
                        tl.store(q_a, tl.load(q_a, mask=keep_a, other=0.0) + acc_a * coef, mask=keep_a)
                else:  # launched over the rows read: each added into its row with an atomic add
                    k_row_a = tl.load(idx + tl.load(frame + position_a) + z, mask=row_mask, other=0)
                    into0_a = tl.load(frame + into_a) + k_row_a * tl.load(frame + into_a + 1) + tl.load(t + 6)
                    source1_a = tl.load(t + 8) + rowbase + zrow
                    for c1_a in range(0, numel_a, CHUNK):
                        cols1_a = c1_a + tl.arange(0, CHUNK)
                        keep1_a = row_mask[:, None] & (cols1_a < numel_a)[None, :]
                        v_a = tl.load(buf + source1_a[:, None] + cols1_a[None, :], mask=keep1_a, other=0.0)
                        tl.atomic_add(buf + into0_a[:, None] + cols1_a[None, :], v_a * coef, mask=keep1_a)
        tl.debug_barrier()
