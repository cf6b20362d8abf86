"""Pairwise contractions as matrix products, with the memory layouts of their operands in view.

A pairwise contraction `out[...] = Σ a[...] b[...]` runs on the CPU as one (batched) matrix
product: a viewed as (batch, left, summed), b as (batch, summed, right). Whether those views exist
without a copy depends on the order of the labels in each group and on the operands' strides; the
product's result is laid out (batch, left, right), or (batch, right, left) when computed as
bᵀ·aᵀ. `plan_pair` picks the group orders and the orientation that copy least; `factorize` uses
it to lay out intermediates the way their consumer reads them, and the torch back end emits the
plan as permute / reshape / bmm. (torch.einsum makes the same product but lays intermediates out
its own way, and the next product then copies them: 36% of fc_tp's forward+backward time.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import permutations, product
from math import prod

from fusionc.machine import CpuBlas


@dataclass(frozen=True)
class Strided:
    """A tensor's labels, with each axis's size and stride (in elements)."""

    labels: str
    sizes: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.sizes)


def row_view(labels: str, sizes: tuple[int, ...], row_stride: int | None = None) -> Strided:
    """A view whose axes are contiguous in label order, except a leading rows axis `z` whose stride
    is `row_stride` (a slice of wider rows)."""
    strides, step = [], 1
    for label, size in reversed(list(zip(labels, sizes))):
        strides.append(row_stride if label == "z" and row_stride is not None else step)
        step *= size
    return Strided(labels, sizes, tuple(reversed(strides)))


def _group(t: Strided, order: str) -> tuple[int, int] | None:
    """(size, stride) of axes `order` of t merged into one, or None where they do not merge."""
    axes = [(t.sizes[t.labels.index(c)], t.strides[t.labels.index(c)]) for c in order]
    axes = [a for a in axes if a[0] != 1]
    if not axes:
        return 1, 1
    for (_, outer), (size, inner) in zip(axes, axes[1:]):
        if outer != inner * size:
            return None
    return prod(s for s, _ in axes), axes[-1][1]


def _matrix_view(t: Strided, batch: str, rows: str, cols: str) -> tuple[int, bool]:
    """(elements copied, column-major) to view t as a (batch, rows, cols) stack of matrices a BLAS
    call takes, one of rows or cols with unit stride: no copy, or all of t (into row-major)."""
    groups = [_group(t, g) for g in (batch, rows, cols)]
    if any(g is None for g in groups):
        return t.numel, False
    (_, _), (n_r, s_r), (n_c, s_c) = groups
    if s_c == 1 or n_c == 1:
        return 0, False
    if s_r == 1 or n_r == 1:
        return 0, True
    return t.numel, False


def matrix_copies(t: Strided, batch: str, rows: str, cols: str) -> int:
    """Elements copied to view t as (batch, rows, cols) matrices (0: it is one already)."""
    return _matrix_view(t, batch, rows, cols)[0]


@dataclass(frozen=True)
class PairPlan:
    """out = a · b as a matrix product: a as (batch, left, summed), b as (batch, summed, right);
    `swap` computes bᵀ · aᵀ, whose result is laid out (batch, right, left)."""

    batch: str
    left: str
    right: str
    summed: str
    swap: bool
    copies: int  # elements the operand views copy
    time: float = 0.0  # `product_time` and copies, in its units: what the plan was chosen by

    @property
    def natural(self) -> str:
        """The result's labels in memory order."""
        return self.batch + (self.right + self.left if self.swap else self.left + self.right)


def _orders(labels: str, *preferred: str) -> list[str]:
    """Orders of a label group to try: the preferred ones (as given), then every permutation."""
    seen = [o for o in dict.fromkeys("".join(c for c in p if c in labels) for p in preferred)]
    return seen + [o for o in ("".join(q) for q in permutations(labels)) if o not in seen]


def _by_stride(t: Strided) -> str:
    return "".join(sorted(t.labels, key=lambda c: -t.strides[t.labels.index(c)]))


def product_time(batch: int, rows: int, inner: int, columns: int, model: CpuBlas = CpuBlas()) -> float:
    """Time of a (rows × inner)·(inner × columns) product, `batch` of them, in the units of `model`
    (`CpuBlas`: about 0.08 ns on the machine it was fitted on, torch 2.13, 2 threads, MKL): one large
    matrix product runs at `flops_per_unit` multiply-adds per unit; a batch of small ones is
    dominated by its rows, each as slow as `min_columns` columns (a vector register's worth) however
    few it has. Measured at 2,000 rows: (32 × 6)·(6 × 5) per row took 500 µs, its transpose
    (5 × 6)·(6 × 32) 150 µs; (32 × 3)·(3 × 6) 317 µs against 123 µs for (6 × 3)·(3 × 32)."""
    if batch == 1:
        return rows * inner * columns / model.flops_per_unit
    return batch * (rows * inner * max(columns, model.min_columns) + model.batch_call)


@lru_cache(maxsize=None)
def plan_pair(a: Strided, b: Strided, out: str, model: CpuBlas = CpuBlas()) -> PairPlan | None:
    """The cheapest matrix-product plan for out = Σ a · b on `model`; None where it is not one
    matrix product (a label in one operand only that the output lacks, or repeated labels)."""
    if len(set(a.labels)) != len(a.labels) or len(set(b.labels)) != len(b.labels) or len(set(out)) != len(out):
        return None
    if set(out) - set(a.labels) - set(b.labels) or (set(a.labels) ^ set(b.labels)) - set(out):
        return None
    batch = "".join(c for c in out if c in a.labels and c in b.labels)
    left = "".join(c for c in out if c in a.labels and c not in b.labels)
    right = "".join(c for c in out if c in b.labels and c not in a.labels)
    summed = "".join(c for c in a.labels if c in b.labels and c not in out)
    n_batch, n_left, n_right, n_summed = (prod(_size(a, b, c) for c in g) for g in (batch, left, right, summed))
    best = None
    for order_b, order_l, order_r, order_s in product(_orders(batch, out, _by_stride(a)),
                                                      _orders(left, _by_stride(a), out),
                                                      _orders(right, _by_stride(b), out),
                                                      _orders(summed, _by_stride(a), _by_stride(b))):
        (copies_a, column_a), (copies_b, column_b) = (_matrix_view(a, order_b, order_l, order_s),
                                                      _matrix_view(b, order_b, order_s, order_r))
        copies = copies_a + copies_b
        for swap in (False, True):
            plan = PairPlan(order_b, order_l, order_r, order_s, swap, copies)
            # the result read in `out` order: a later copy unless that is its memory order
            moved = copies + (0 if plan.natural == out else n_batch * n_left * n_right)
            rows, columns = (n_right, n_left) if swap else (n_left, n_right)
            time = product_time(n_batch, rows, n_summed, columns, model)
            # a long reduction (over rows: a weight gradient) whose call's first operand is
            # column-major: slow paths of MKL's double-precision product (float32 has none) unless
            # the result is at least twice as wide as tall. At K = 10,000 against both row-major:
            # both column-major 6.4× (64 × 32 results), 3.3× (32 × 32), 2.0× (96 × 32), 1.3×
            # (32 × 64); the first only, 1.7× (64 × 32), 1.3× (32 × 32), 1.0× (32 × 64, 96 × 32).
            # fc_tp's float64 gradient had taken 2.75 ms per (64 × 6,000)·(6,000 × 32) product.
            first_column = not column_b if swap else column_a
            second_column = not column_a if swap else column_b
            if n_batch == 1 and n_summed > 8 * max(rows, columns) and first_column:
                if columns >= 2 * rows:
                    time *= 1.3 if second_column else 1
                else:
                    time *= 8 if second_column else 3
            # short of time, rows outermost, as the results it is added to have them
            cost = (model.copy * moved + time, plan.natural[:1] != out[:1])
            if best is None or cost < best[0]:
                best = (cost, plan)
    return replace(best[1], time=best[0][0])


def _size(a: Strided, b: Strided, label: str) -> int:
    t = a if label in a.labels else b
    return t.sizes[t.labels.index(label)]


def natural_orders(a: Strided, b: Strided, kept: str) -> list[str]:
    """Label orders a product of a and b keeping `kept` can lay its result out in without a copy
    of the result: (batch, left, right) and (batch, right, left), each group in any order."""
    batch = [c for c in kept if c in a.labels and c in b.labels]
    left = [c for c in kept if c in a.labels and c not in b.labels]
    right = [c for c in kept if c in b.labels and c not in a.labels]
    orders = []
    for o_b, o_l, o_r in product(_orders("".join(batch)), _orders("".join(left)), _orders("".join(right))):
        orders += [o_b + o_l + o_r, o_b + o_r + o_l]
    return list(dict.fromkeys(orders))
