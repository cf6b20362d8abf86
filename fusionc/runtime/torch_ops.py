"""What generated modules call: the module base with exact constant tables, input validation,
and the registration of each diagram as a torch.library custom op."""

from __future__ import annotations

import math
import os
import sys

import torch

from fusionc.runtime.native import NativeKernels  # noqa: F401  (generated modules use it as rt.NativeKernels)
from fusionc.runtime.tables import TableProgram  # noqa: F401  (generated modules use it as rt.TableProgram)


def _dense(shape: tuple[int, ...], entries: tuple[tuple, ...], dtype: torch.dtype,
           device: torch.device | str | None) -> torch.Tensor:
    """The table of these sparse entries (indices..., value): built in float64, where the values
    are exact, then cast, so that each is rounded once to `dtype`."""
    table = torch.zeros(shape, dtype=torch.float64)
    if entries:
        *indices, values = zip(*entries)
        table[tuple(map(list, indices))] = torch.tensor(values, dtype=torch.float64)
    return table.to(dtype=dtype, device=device)


class FusionModule(torch.nn.Module):
    """Base of generated modules: constant tables are buffers, rebuilt exactly on dtype or device moves.

    `module.double()` on a float32 module would otherwise upcast CG values already rounded to
    float32; rebuilding them from the exact tables keeps float64 results exact. The constants are
    the CG tables `cg_{l1}_{l2}_{l3}`, given as their sparse entries (i, j, k, value) by
    (l1, l2, l3), and constant matrices (the recoupling matrices of recoupled terms, the stacked CG
    tables of batched products) given as sparse entries (row, column, value) of a (rows, columns)
    matrix. The generated module holds the values (float64, written to round-trip exactly), so
    loading it computes no CG table: the runtime needs torch alone.
    """

    cg_tables: dict[tuple[int, int, int], tuple[tuple[int, int, int, float], ...]] = {}
    matrices: dict[str, tuple[tuple[int, int], tuple[tuple[int, int, float], ...]]] = {}

    def _constants(self, dtype: torch.dtype, device: torch.device | str | None) -> dict[str, torch.Tensor]:
        tables = {"cg_{}_{}_{}".format(*ls): _dense(tuple(2 * l + 1 for l in ls), entries, dtype, device)
                  for ls, entries in self.cg_tables.items()}
        for name, (shape, entries) in self.matrices.items():
            tables[name] = _dense(shape, entries, dtype, device)
        return tables

    def _register_constants(self, dtype: torch.dtype, device: torch.device | str | None) -> None:
        for name, table in self._constants(dtype, device).items():
            self.register_buffer(name, table, persistent=False)

    def _constant_names(self) -> list[str]:
        return ["cg_{}_{}_{}".format(*ls) for ls in self.cg_tables] + list(self.matrices)

    def constants(self) -> list[torch.Tensor]:
        """The constant tables in the order the diagram's op takes them."""
        return [getattr(self, name) for name in self._constant_names()]

    def __reduce_ex__(self, protocol):
        """Pickled (`torch.save`, `copy.deepcopy`) as the module's `.fus` source, class name and
        state, where the loader imported it: unpickling imports the module from the cache (compiling
        it on a miss), so that a new process needs nothing but fusionc installed."""
        origin = getattr(sys.modules.get(type(self).__module__), "__fusionc_origin__", None)
        if origin is None:
            return super().__reduce_ex__(protocol)
        rebuild = sys.modules["fusionc.loader"]._unpickle  # the loader imported this module's
        return rebuild, (origin, type(self).__name__), self.__getstate__()

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if self.weight.numel() != self.weight_numel:  # another compiler version lays out other weights
            raise ValueError(f"{type(self).__name__} was saved with {self.weight.numel()} internal weights, but "
                             f"this compiler's module has {self.weight_numel}; rebuild it from its source")

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        names = self._constant_names()
        if names:
            moved = getattr(self, names[0])
            for name, table in self._constants(moved.dtype, moved.device).items():
                setattr(self, name, table)
        return self


def _check_float(name: str, x: object, dim: int, ref: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"input '{name}' must be a tensor of shape {what}, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(f"input '{name}' must have shape {what}, got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise ValueError(f"input '{name}' has dtype {x.dtype} but the module is {ref.dtype}; "
                         f"convert one of them (e.g. module.to({x.dtype}))")
    if x.device != ref.device:
        raise ValueError(f"input '{name}' is on {x.device} but the module is on {ref.device}")
    return x


def _broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    """`torch.broadcast_shapes`, but in eager mode computed here: torch's first call imports sympy
    (0.5 s), which nothing else a generated module runs needs. When torch.compile traces, torch's,
    which knows symbolic sizes. A RuntimeError says the shapes do not broadcast."""
    if torch.compiler.is_compiling():
        return torch.broadcast_shapes(*shapes)
    result = [1] * max(map(len, shapes), default=0)
    for shape in shapes:
        for k, size in enumerate(shape, len(result) - len(shape)):
            if size != 1:
                if result[k] not in (1, size):
                    raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                result[k] = size
    return torch.Size(result)


def batch_shape(ref: torch.Tensor, features: dict[str, tuple[torch.Tensor, int]],
                weights: dict[str, tuple[torch.Tensor, int]]) -> torch.Size:
    """The broadcast leading shape of all inputs; a ValueError names any input that does not fit."""
    shapes = []
    for name, (x, dim) in features.items():
        shapes.append(_check_float(name, x, dim, ref, f"(..., {dim})").shape[:-1])
    try:
        batch = _broadcast_shapes(*shapes)
    except RuntimeError:
        listed = ", ".join(f"'{k}' {tuple(v[0].shape)}" for k, v in features.items())
        raise ValueError(f"the leading (batch) shapes of the inputs do not broadcast: {listed}") from None
    for name, (w, numel) in weights.items():
        leading = _check_float(name, w, numel, ref, f"({numel},) or (..., {numel})").shape[:-1]
        try:
            if _broadcast_shapes(leading, batch) != batch:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"input '{name}' must have shape ({numel},) or {(*batch, numel)}, "
                             f"got {tuple(w.shape)}") from None
    return batch


def graph_rows(ref: torch.Tensor, features: dict[str, tuple[torch.Tensor, int, str]],
               indices: dict[str, tuple[torch.Tensor, str, str | None]]) -> dict[str, int]:
    """The rows of each index space of a diagram with spaces, from its inputs: `features` (name:
    tensor, size per row, space) and `indices` (name: tensor, its space, the space it points into,
    or None for an index(K), which the op checks). A ValueError names any input whose shape,
    dtype or device does not fit, inputs of one space with different row counts, and an index
    outside the rows of the space it points into (with that space's size)."""
    rows: dict[str, tuple[int, str]] = {}

    def count(name: str, n: int, space: str) -> None:
        if space in rows and rows[space][0] != n:
            first, m = rows[space][1], rows[space][0]
            raise ValueError(f"inputs '{first}' and '{name}' both have rows in '{space}', but {m} and {n} of them")
        rows.setdefault(space, (n, name))

    for name, (x, size, space) in features.items():
        _check_float(name, x, size, ref, f"(n_{space}, {size})")
        if x.dim() != 2:
            raise ValueError(f"input '{name}' must have shape (n_{space}, {size}), got {tuple(x.shape)}")
        count(name, x.shape[0], space)
    for name, (z, space, _) in indices.items():
        if not isinstance(z, torch.Tensor) or z.dtype.is_floating_point or z.dtype.is_complex or z.dtype == torch.bool:
            raise ValueError(f"input '{name}' must be an integer tensor of shape (n_{space},), "
                             f"got {getattr(z, 'dtype', type(z).__name__)}")
        if z.dim() != 1:
            raise ValueError(f"input '{name}' must have shape (n_{space},), got {tuple(z.shape)}")
        if z.device != ref.device:
            raise ValueError(f"input '{name}' is on {z.device} but the module is on {ref.device}")
        count(name, z.shape[0], space)
    sizes = {space: n for space, (n, _) in rows.items()}
    for name, (z, space, points) in indices.items():
        if points is None:
            continue
        if torch.compiler.is_compiling():  # traced (torch.compile, torch.export): checked in the graph when it runs
            torch._assert_async(((z >= 0) & (z < sizes[points])).all(),
                                f"input '{name}' points at rows of '{points}', outside its {sizes[points]} rows")
        elif z.numel() and (int(z.min()) < 0 or int(z.max()) >= sizes[points]):
            raise ValueError(f"input '{name}' points at rows of '{points}', which has {sizes[points]}, but has values "
                             f"from {int(z.min())} to {int(z.max())}")
    return sizes


def numel(batch: torch.Size) -> int:
    return math.prod(batch)


def rows(x: torch.Tensor, batch: torch.Size, dim: int) -> torch.Tensor:
    """x as an (n, dim) matrix of rows, broadcast to the batch shape."""
    return x.expand(*batch, dim).reshape(-1, dim)


def weight_rows(w: torch.Tensor, batch: torch.Size, numel: int) -> torch.Tensor:
    """Per-row weights as an (n, numel) matrix; a shared (numel,) vector is broadcast."""
    return w.expand(*batch, numel).reshape(math.prod(batch), numel)  # -1 is ambiguous with no weights


def index_rows(z: torch.Tensor, batch: torch.Size, name: str, ref: torch.Tensor) -> torch.Tensor:
    """An index input as an (n,) int64 column, broadcast to the batch shape (its values are
    checked inside the op, where the data is at hand). Any integer dtype is read as its values:
    torch would take a uint8 tensor as a mask, and int8/int16 not at all."""
    if not isinstance(z, torch.Tensor) or z.dtype.is_floating_point or z.dtype.is_complex or z.dtype == torch.bool:
        raise ValueError(f"input '{name}' must be an integer tensor of shape {tuple(batch)}, "
                         f"got {getattr(z, 'dtype', type(z).__name__)}")
    if z.device != ref.device:
        raise ValueError(f"input '{name}' is on {z.device} but the module is on {ref.device}")
    try:
        if _broadcast_shapes(z.shape, batch) != batch:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"input '{name}' must have shape {tuple(batch)}, got {tuple(z.shape)}") from None
    return z.to(torch.int64).expand(batch).reshape(-1)


def output_rows(like: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """An uninitialised (n, dim) output for a kernel to fill; NaN-filled when
    FUSIONC_POISON_OUTPUTS=1, so that a test sees any element the kernel did not write."""
    if os.environ.get("FUSIONC_POISON_OUTPUTS") == "1":
        return like.new_full((n, dim), float("nan"))
    return like.new_empty(n, dim)


def tuning_configs(configs: list, named_args: dict, **kwargs) -> list:
    """`triton.autotune`'s pruning hook: every configuration on a GPU (the autotuner times them
    there); under TRITON_INTERPRET=1, where nothing can be timed, the first, the default."""
    return configs[:1] if os.environ.get("TRITON_INTERPRET") == "1" else configs


def wanted(ctx, rows: list[torch.Tensor], tensors: int) -> set[int]:
    """Positions of the gradients (the floating inputs', then the weight's) that the running
    backward will use: those of inputs that require grad and whose gradient node the autograd
    engine will execute (`torch.autograd.grad(energy, positions)` executes none of the weights').
    Where the engine cannot say, every gradient of an input that requires grad. `tensors` counts
    the op's tensor arguments (rows, weight, constants), each an edge of the node `ctx`."""
    needs = [*ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    float_positions = [i for i, r in enumerate(rows) if r.is_floating_point()] + [len(rows)]
    try:
        nodes = [node for node, _ in ctx.next_functions]
    except (AttributeError, RuntimeError):
        nodes = []
    if len(nodes) != tensors:  # not the edges this op's arguments make: ask nothing of them
        nodes = [None] * tensors
    needed = set()
    for k, i in enumerate(float_positions):
        if not needs[i]:
            continue
        node = nodes[i]
        try:
            if node is not None and not torch._C._will_engine_execute_node(node):
                continue
        except RuntimeError:  # a leaf autograd.grad asked for, or not inside the engine: needed
            pass
        needed.add(k)
    return needed


def assemble(like: torch.Tensor, n: int | None, size: int,
             parts: list[tuple[int, int, list[torch.Tensor | None]]]) -> torch.Tensor | None:
    """A tensor, (n, size) or (size,), from pieces each added at its place, zeros elsewhere; pieces
    of statements a masked call did not run are None and left out (all None: None)."""
    present = [(start, numel, [p for p in pieces if p is not None]) for start, numel, pieces in parts]
    present = [(start, numel, pieces) for start, numel, pieces in present if pieces]
    if not present:
        return None
    lead = () if n is None else (n,)
    if len(present) == 1 and present[0][:2] == (0, size):
        total = present[0][2][0]
        for piece in present[0][2][1:]:
            total = total + piece
        return total.reshape(*lead, size)
    out = like.new_zeros(*lead, size)
    for start, numel, pieces in present:
        for piece in pieces:
            out[..., start:start + numel] += piece.reshape(*lead, numel)
    return out


def first_order(forward, output: int, count: int):
    """A function computing what a first derivative program computes, by differentiating the
    forward program's torch code (torch.func): what the op of a derivative program runs where its
    native kernels do not (no C compiler, another device, FUSIONC_NATIVE=0). Its arguments are the
    derivative's: the forward's `count` inputs, the cotangent of forward output `output`, the
    weight and the constants, and `_mask` (bit k: the k-th gradient wanted); it returns the
    gradients of the floating inputs, then of the weight, zeros where the mask does not ask."""

    def first(*args: torch.Tensor, _mask: int = -1) -> list[torch.Tensor]:
        rows, cotangent, weight, constants = list(args[:count]), args[count], args[count + 1], args[count + 2:]
        primals = [*(r for r in rows if r.is_floating_point()), weight]
        wanted = [k for k in range(len(primals)) if _mask >> k & 1]

        def value(*xs: torch.Tensor) -> torch.Tensor:
            inputs = [*primals]
            for k, x in zip(wanted, xs):
                inputs[k] = x
            floats = iter(inputs)
            return forward(*(next(floats) if r.is_floating_point() else r for r in rows),
                           inputs[-1], *constants)[output]

        gradients = [torch.zeros_like(x) for x in primals]
        if wanted:
            _, pullback = torch.func.vjp(value, *(primals[k] for k in wanted))
            for k, g in zip(wanted, pullback(cotangent)):
                gradients[k] = g
        return gradients

    return first


def second_order(forward, output: int, count: int):
    """A function computing what a second derivative program computes, by differentiating the
    forward program's torch code twice (torch.func): what the op of a second derivative program
    runs where its native kernels do not (as `first_order`), and the `reference` of a program whose
    kernel autograd cannot see through, so that its own derivative (a third one) is available. Its
    arguments are the second program's: the forward's `count` inputs, the cotangent of forward
    output `output`, the cotangents of the first derivative's gradients (its floating inputs', then
    the weight's), the weight and the constants; it returns the gradients of the first
    derivative's floating inputs (the forward's, then the cotangent) and of the weight."""

    def second(*args: torch.Tensor, _mask: int = -1) -> list[torch.Tensor]:  # every gradient, whatever the mask
        rows, cotangent = list(args[:count]), args[count]
        floats = [i for i, r in enumerate(rows) if r.is_floating_point()]
        seconds = args[count + 1:count + 2 + len(floats)]
        weight, constants = args[count + 2 + len(floats)], args[count + 3 + len(floats):]

        def first(weight: torch.Tensor, cotangent: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            def value(weight: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
                inputs = list(rows)
                for i, x in zip(floats, xs):
                    inputs[i] = x
                return forward(*inputs, weight, *constants)[output]

            _, pullback = torch.func.vjp(value, weight, *xs)
            gradients = pullback(cotangent)
            return (*gradients[1:], gradients[0])

        _, pullback = torch.func.vjp(first, weight, cotangent, *(rows[i] for i in floats))
        gradients = pullback(tuple(seconds))
        return [*gradients[2:], gradients[1], gradients[0]]

    return second


def check_index_range(z: torch.Tensor, size: int, name: str) -> None:
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= size):
        raise ValueError(f"input '{name}' has values outside [0, {size}): min {int(z.min())}, max {int(z.max())}")


_LIBRARIES: dict[str, torch.library.Library] = {}


class OpNamespace:
    """The torch.library ops of one generated module: each program (a diagram's forward, its
    derivative, the derivative's derivative) as a custom op with a fake (meta) implementation,
    for torch.compile, and autograd.

    An op's backward is the op of its derivative program; the last op of a chain differentiates
    through its own torch code (torch.func.vjp), or through a `reference` (`second_order`), so
    every order of derivative is available.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        # the registrations last as long as their library object: as long as the process
        if namespace not in _LIBRARIES:
            _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")
        self.library = _LIBRARIES[namespace]
        self.kernels: NativeKernels | None = None  # the module's native CPU kernels, set after its ops
        self.ops: dict[str, object] = {}  # by program name (not attributes: a diagram may be named `register`)

    def __getitem__(self, name: str):
        return self.ops[name]

    def register(self, name: str, fn, outputs: tuple[tuple[int, bool | int], ...],
                 index_ranges: dict[int, tuple[str, int]], backward=None, backward_all=None,
                 check_indices: bool = False, masked: bool = False, reference=None, cpu=None) -> None:
        """Register `fn` as op `name`. `outputs` are (size, rows) per output: (n, size) with n the
        rows of its first input (rows True) or of input `rows` (an int: a diagram with index spaces),
        or (size,) (rows False).
        `index_ranges` maps the position of each index input to its name and size; with
        `check_indices` the values are checked when the op runs (not when it is traced). A
        `masked` op takes a mask (bit k: its k-th gradient wanted, or its k-th cotangent input
        present) and skips the statements no bit set needs. The backward is, per output, the op of
        `backward` computing this one's vector-Jacobian product for that output's cotangent from
        (inputs + [cotangent], weight, constants), masked to the gradients autograd will use
        (`wanted`), the products of the cotangents present summed; or `backward_all`, one op taking
        every output's cotangent (zeros for those absent), masked to those present. Without
        either, the VJP of `reference` (torch code computing what `fn` computes, for an `fn` that
        runs a kernel autograd cannot see through), else of `fn` itself, mask unset. `cpu`, where
        given, computes the same with native kernels for its row-local statements, and runs
        instead of `fn` on CPU tensors of float32 or float64 when those kernels can be built
        (`fusionc.runtime.native`)."""
        qualname = f"{self.namespace}::{name}"
        try:  # the namespace is a hash of the code: an op of that name is this very op
            self.ops[name] = getattr(getattr(torch.ops, self.namespace), name)
            return
        except AttributeError:
            pass

        # constants optional: AOTInductor's runtime passes an empty tensor list as None
        self.library.define(f"{name}(Tensor[] inputs, Tensor weight, Tensor[]? constants, int mask=-1) -> Tensor[]")

        def op(inputs, weight, constants, mask=-1):
            constants = constants or []
            if check_indices:
                for position, (input_name, size) in index_ranges.items():
                    check_index_range(inputs[position], size, input_name)
            run = fn
            if cpu is not None and weight.device.type == "cpu" and self.kernels.usable(weight.dtype):
                run = cpu
            return run(*inputs, weight, *constants, _mask=mask) if masked else run(*inputs, weight, *constants)

        # registered as a plain op, not through torch.library.custom_op, whose first call in a
        # process imports torch._dynamo (0.9 s) to keep dynamo out of the implementation
        self.library.impl(name, op, "CompositeExplicitAutograd")

        def shape(size: int, rows: bool | int, inputs) -> tuple[int, ...]:
            if rows is False:
                return (size,)
            return (inputs[0 if rows is True else rows].shape[0], size)

        @torch.library.register_fake(qualname, lib=self.library)
        def _(inputs, weight, constants, mask=-1):
            return [weight.new_empty(shape(size, rows, inputs)) for size, rows in outputs]

        def setup_context(ctx, inputs, output):
            ctx.set_materialize_grads(False)  # an unused output's cotangent stays None: its work is skipped
            rows, weight, constants = inputs[:3]
            ctx.save_for_backward(*rows, weight, *constants)
            ctx.count = len(rows)

        def cotangents(grads, inputs, like: torch.Tensor) -> list[torch.Tensor]:
            return [g if g is not None else like.new_zeros(shape(size, rows, inputs))
                    for g, (size, rows) in zip(grads, outputs)]

        def vjp(rows, weight, constants, grads) -> list[torch.Tensor]:
            """Gradients of the floating inputs, then of the weight, by autograd through `fn`."""
            floats = [i for i, r in enumerate(rows) if r.is_floating_point()]

            def of(weight, *xs):
                args = list(rows)
                for i, x in zip(floats, xs):
                    args[i] = x
                return (reference or fn)(*args, weight, *constants)

            _, pullback = torch.func.vjp(of, weight, *(rows[i] for i in floats))
            result = pullback(grads)
            return list(result[1:]) + [result[0]]

        def backward_fn(ctx, grads):
            saved, count = ctx.saved_tensors, ctx.count
            rows, weight, constants = list(saved[:count]), saved[count], list(saved[count + 1:])
            gradients = sum(r.is_floating_point() for r in rows) + 1
            if backward is not None:
                needed = wanted(ctx, rows, len(saved))
                result: list[torch.Tensor | None] = [None] * gradients
                for op, g in zip(backward, grads):
                    if g is None or not needed:
                        continue
                    part = op(rows + [g], weight, constants, sum(1 << k for k in needed))
                    for k in needed:
                        result[k] = part[k] if result[k] is None else result[k] + part[k]
            elif backward_all is not None:
                present = [k for k, g in enumerate(grads) if g is not None]
                if present:
                    result = backward_all(rows + cotangents(grads, rows, weight), weight, constants,
                                          sum(1 << k for k in present))
                else:
                    result = [None] * gradients
            else:
                result = vjp(rows, weight, constants, cotangents(grads, rows, weight))
            grad_rows: list[torch.Tensor | None] = [None] * count
            floats = [i for i, r in enumerate(rows) if r.is_floating_point()]
            for i, g in zip(floats, result[:-1]):
                grad_rows[i] = g
            # a mask passed (its own structure says so: not a default torch filled in) has a None gradient
            return (grad_rows, result[-1], [None] * len(constants)) + (None,) * (len(ctx.needs_input_grad) - 3)

        torch.library.register_autograd(qualname, backward_fn, setup_context=setup_context, lib=self.library)
        self.ops[name] = getattr(getattr(torch.ops, self.namespace), name)
