"""Index spaces (message passing): `in h[node]`, `in src[edge] : index(node)`, `h[src]` (a gather),
`m[dst] += …` (a scatter). The type rules, each broken once with the exact `line:col` its error
points at (checked by eye: the caret sits under the offending text), and what a well-typed
diagram with spaces becomes."""

from __future__ import annotations


import pytest
import torch
from e3nn import o3

import fusionc
from conftest import default_dtype, slow
from fusionc.cli import main
from fusionc.errors import FusionError
from fusionc.analysis.program import Gather, Kernel, Scatter
from fusionc.pipeline import compile, compile_source

BASE = """\
diagram d {
    in  h[node]   : 8x0e + 8x1o
    in  sh[edge]  : 0e + 1o
    in  w[edge]   : weights
    in  src[edge] : index(node)
    in  dst[edge] : index(node)
    out m[node]   : 8x0e + 8x1o
    m[dst] += fuse(h[src], sh) mix uvu by w
}
"""

INTERACTION = """\
diagram interaction {
    in  h[node]   : 32x(0e + 1o + 2e)
    in  sh[edge]  : 0e + 1o + 2e + 3o
    in  w[edge]   : weights
    in  src[edge] : index(node)
    in  dst[edge] : index(node)
    out m[node]   : 32x(0e + 1o + 2e)
    let hu = h mix uvw
    let agg[dst] += fuse(hu[src], sh) -> 32x(0e + 1o + 2e + 1e + 2o + 3o + 3e) mix uvu by w
    m = agg mix uvw
}
"""


def _edit(*pairs: str) -> str:
    source = BASE
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert old in source
        source = source.replace(old, new)
    return source


CASES = [
    pytest.param(_edit("in  sh[edge]  :", "in  sh        :"), 3, 9, "'sh' needs an index space", id="space-missing"),
    pytest.param("diagram d {\n    in  x : 8x0e\n    in  i : index(node)\n    out y : 8x0e\n    y = x mix uvw\n}\n",
                 3, 19, "index(node) points at rows of an index space", id="index-into-a-space-without-spaces"),
    pytest.param(_edit("index(node)\n    in  dst", "index(nodes)\n    in  dst"), 5, 27,
                 "no input or output has rows in space 'nodes'; did you mean 'node'?", id="space-unknown"),
    pytest.param(_edit("fuse(h[src], sh)", "fuse(h[sh], sh)"), 8, 22, "but 'sh' is an irreps input",
                 id="gather-by-an-irreps-input"),
    pytest.param(_edit("in  w[edge]   : weights", "in  w[edge]   : weights\n    in  z[edge]   : index(4)",
                       "fuse(h[src], sh)", "fuse(h[z], sh)"), 9, 22, "'z' is index(4), a selector of weight sets",
                 id="gather-by-a-species-index"),
    pytest.param(_edit("fuse(h[src], sh)", "fuse(h[src], sh[src])"), 8, 31,
                 "'src' points at rows of 'node', but 'sh' has its rows in space 'edge'", id="gather-from-another-space"),
    pytest.param(_edit("fuse(h[src], sh)", "fuse(h, sh)"), 8, 23, "'sh' has its rows in 'edge', but 'h' in 'node'",
                 id="term-in-two-spaces"),
    pytest.param(_edit("in  w[edge]", "in  w[node]"), 8, 43, "weights input 'w' has its rows in 'node'",
                 id="weights-in-another-space"),
    pytest.param(_edit("m[dst] +=", "m +="), 8, 5, "'+=' sums rows into the rows an index picks",
                 id="accumulate-without-an-index"),
    pytest.param(_edit("m[dst] +=", "m[dst] ="), 8, 7, "write m[dst] += …", id="scatter-with-equals"),
    pytest.param(_edit("m[dst] +=", "m ="), 8, 9, "'m' has its rows in 'node' but this sum's are in 'edge'",
                 id="output-rows-in-another-space"),
    pytest.param(_edit("in  dst[edge] : index(node)", "in  dst[edge] : index(node)\n    in  e[node]   : index(node)",
                       "m[dst] +=", "m[e] +="), 9, 7, "'e' has its rows in 'node', but this sum's are in 'edge'",
                 id="scatter-by-an-index-of-other-rows"),
    pytest.param(_edit("out m[node]", "out m[edge]"), 8, 7, "'dst' points at rows of 'node', but 'm' has its rows in 'edge'",
                 id="scatter-into-another-space"),
    pytest.param(_edit("out m[node]   : 8x0e + 8x1o", "out m[atom]   : 8x0e + 8x1o\n    out k[node]   : 8x0e",
                       "in  dst[edge] : index(node)", "in  dst[edge] : index(atom)", "    m[dst]", "    k = h mix uvw\n    m[dst]"),
                 7, 11, "no input has rows in space 'atom'", id="space-without-an-input"),
    pytest.param(_edit("mix uvu by w", "mix uvu per src"), 8, 44, "'per src' selects one of K weight sets",
                 id="per-by-an-index-into-a-space"),
    pytest.param(_edit("mix uvu by w", "mix uvu by w + h mix uvw"), 8, 47,
                 "this term's rows are in 'node', the first term's in 'edge'", id="terms-in-two-spaces"),
]


@pytest.mark.parametrize("source, line, column, phrase", CASES)
def test_a_broken_rule_is_a_located_error(tmp_path, capsys, source, line, column, phrase):
    path = tmp_path / "bad.fus"
    path.write_text(source)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:{column}: error: " in err and phrase in err, err


def test_the_interaction_block_types_as_one_diagram():
    (d,) = compile_source(INTERACTION)
    assert d.spaces == ("node", "edge")
    assert {i.name: (i.space, i.points) for i in d.inputs} == {
        "h": ("node", None), "sh": ("edge", None), "w": ("edge", None), "src": ("edge", "node"), "dst": ("edge", "node")}
    hu, agg, m = d.values
    assert (hu.space, hu.scatter, agg.space, agg.scatter, m.space, m.scatter) == ("node", None, "node", "dst", "node", None)
    (conv,) = agg.terms
    assert (conv.operands, conv.gathers, conv.keys, conv.space) == (("hu", "sh"), ("src", None), ("hu[src]", "sh"), "edge")
    assert [t.space for t in (*hu.terms, *m.terms)] == ["node", "node"]
    assert d.internal_weight_numel == 2 * 3 * 32 * 32  # the two linear maps; the convolution's weights come by w
    assert "agg.0 = uvu (hu[src], sh) by w" in d.pretty() and "in  src[edge] : index(node)" in d.pretty()


def test_the_same_value_gathered_by_two_indices_is_two_operands():
    """fuse(h[src], h[dst]) couples two rows of h (a product of two operands); fuse(h[src], h[src])
    repeats one operand (a symmetric fusion tree)."""
    two = _edit("m[dst] += ", "m[dst] += fuse(h[src], h[dst]) mix uuu + ")
    same = _edit("m[dst] += ", "m[dst] += fuse(h[src], h[src]) mix uuu + ")
    t = compile_source(two)[0].values[0].terms[0]
    u = compile_source(same)[0].values[0].terms[0]
    assert (t.keys, t.is_tree) == (("h[src]", "h[dst]"), False)
    assert (u.keys, u.is_tree) == (("h[src]", "h[src]"), True)


def test_the_check_report_counts_flops_per_row_of_each_space(capsys, tmp_path):
    path = tmp_path / "interaction.fus"
    path.write_text(INTERACTION)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "let agg[node] : " in out and "each edge row added into row dst" in out
    assert "FLOPs per edge row" in out and "FLOPs: 36864 per node row" in out


SMALL = INTERACTION.replace("32x", "2x")


def _graph(nodes: int, edges: int, seed: int, dtype=torch.float64):
    """Features and a random graph whose last node receives no edge and sends none."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(nodes, o3.Irreps("2x0e + 2x1o + 2x2e").dim, generator=g, dtype=dtype)
    sh = torch.randn(edges, 16, generator=g, dtype=dtype)
    src, dst = (torch.randint(0, nodes - 1, (edges,), generator=g) for _ in range(2))
    return h, sh, src, dst, g


def _reference(module, h, sh, w, src, dst):
    """The same block composed of e3nn (o3.Linear, o3.TensorProduct with uvu paths) and torch's
    index_select and index_add, on fusionc's flat weight vector. The sum's blocks the last map does
    not read (1e, 2o, 3o, 3e) fusionc does not compute (`prune`): e3nn's product leaves them out."""
    node, sh_irreps = o3.Irreps("2x0e + 2x1o + 2x2e"), o3.Irreps("0e + 1o + 2e + 3o")
    instructions = [(i, j, k, "uvu", True) for i, (_, a) in enumerate(node) for j, (_, b) in enumerate(sh_irreps)
                    for k, (_, c) in enumerate(node) if c in a * b]
    with default_dtype(h.dtype):  # e3nn builds its CG tables in the default dtype
        up, down = o3.Linear(node, node), o3.Linear(node, node)
        tp = o3.TensorProduct(node, sh_irreps, node, instructions, shared_weights=False, internal_weights=False)
    with torch.no_grad():
        up.weight.copy_(module.weight[:12])
        down.weight.copy_(module.weight[12:])
    summed = torch.zeros(h.shape[0], node.dim, dtype=h.dtype).index_add(0, dst, tp(up(h)[src], sh, w))
    return down(summed)


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "torch-code"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_interaction_block_equals_e3nn_composed_with_index_ops(dtype, tolerance, native, monkeypatch):
    monkeypatch.setenv("FUSIONC_NATIVE", native)  # the fused native kernels, and the torch code beside them
    ops = fusionc.loads(SMALL)
    module = ops.interaction(dtype=dtype)
    torch.nn.init.normal_(module.weight)
    h, sh, src, dst, g = _graph(6, 20, 0, dtype)
    w = torch.randn(20, module.input_weight_numel["w"], generator=g, dtype=dtype)
    got, want = module(h, sh, w, src, dst), _reference(module, h, sh, w, src, dst)
    assert got.shape == (6, h.shape[1]) and got.dtype == dtype
    assert (got - want).abs().max() <= tolerance * want.abs().max()
    assert not got[5].any()  # a node no edge points at: zero
    grads = torch.autograd.grad(got.pow(2).sum(), module.weight)[0]
    assert grads.abs().max() > 0


def _differentiable():
    """The interaction as a function of the node features, the edge features (spherical
    harmonics: forces), the per-edge weights and the module's weights, and those in float64."""
    module = fusionc.loads(SMALL).interaction(dtype=torch.float64)
    h, sh, src, dst, g = _graph(4, 6, 1)
    w = torch.randn(6, module.input_weight_numel["w"], generator=g, dtype=torch.float64)

    def f(h, sh, w, weight):
        return torch.func.functional_call(module, {"weight": weight}, (h, sh, w, src, dst))

    return f, tuple(x.detach().clone().requires_grad_() for x in (h, sh, w, module.weight))


def test_gradients_through_gathers_and_scatters():
    f, inputs = _differentiable()
    assert torch.autograd.gradcheck(f, inputs)


@slow
def test_second_derivatives_through_gathers_and_scatters():
    f, inputs = _differentiable()
    assert torch.autograd.gradgradcheck(f, inputs)


def test_the_forward_never_holds_a_message_per_edge():
    """The native forward is one kernel over edges that reads h[src] in place and adds each
    message into m[dst] in place: no statement outside it, no per-edge tensor in memory but the
    inputs, every row of its space grouped by the receiver."""
    ps = compile(INTERACTION.replace("let hu = h mix uvw", "let hu = h").replace("m = agg mix uvw", "m = agg"),
                 "interaction.fus", "torch")
    p = ps.programs[0].forward.native
    kernels = [s for s in p.statements if isinstance(s, Kernel)]
    edge = [k for k in kernels if k.space == "edge"]
    assert len(edge) == 1 and edge[0].by == "dst"
    assert all(p.tensors[t].space == "node" or how == "local" for t, how in edge[0].homes)
    assert not any(isinstance(s, (Gather, Scatter)) for s in p.statements)
    first = ps.programs[0].firsts[0].native  # the gradient: the same, grouped by sender (d_h[src] +=)
    assert [k.by for k in first.statements if isinstance(k, Kernel) and k.space == "edge"] == ["src"]


def _bits(ts: list[torch.Tensor]) -> list[bytes]:
    return [t.detach().numpy().tobytes() for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_results_are_bitwise_the_same_on_one_and_two_threads(dtype):
    """Each receiver's sum runs on one thread in edge order: forward, gradients and second
    derivatives are the same bits run after run and for any thread count."""
    module = fusionc.loads(BASE).d(dtype=dtype)
    g = torch.Generator().manual_seed(4)
    nodes, edges = 300, 6000
    h = torch.randn(nodes, 32, generator=g, dtype=dtype, requires_grad=True)
    sh = torch.randn(edges, 4, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(edges, module.input_weight_numel["w"], generator=g, dtype=dtype, requires_grad=True)
    src, dst = (torch.randint(0, nodes, (edges,), generator=g) for _ in range(2))

    def run() -> list[bytes]:
        m = module(h, sh, w, src, dst)
        grads = torch.autograd.grad(m.pow(2).sum(), (h, sh, w), create_graph=True)
        seconds = torch.autograd.grad(grads[1].pow(2).sum(), (h, sh, w))
        return _bits([m, *grads, *seconds])

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two, again = run(), run()
    finally:
        torch.set_num_threads(threads)
    assert one == two == again


def _all_orders(module, inputs):
    """The output, its gradients with respect to h, sh and w, and the gradients of a function of
    those (the sh one, as forces would): every program of the diagram, masked as training runs it."""
    h, sh, w, src, dst = (x.detach().clone().requires_grad_() if x.is_floating_point() else x for x in inputs)
    out = module(h, sh, w, src, dst)
    grads = torch.autograd.grad(out.pow(2).sum(), (h, sh, w), create_graph=True)
    seconds = torch.autograd.grad(grads[1].pow(2).sum() + grads[0].pow(3).sum(), (h, sh, w, module.weight))
    return [out, *grads, *seconds]


@pytest.mark.parametrize("mode", ["grouped", "atomic"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_the_triton_back_end_equals_the_torch_back_end(dtype, tolerance, mode, monkeypatch):
    """Under the Triton interpreter: every program of the interaction (linear maps per node, the
    convolution per edge) as launches of the table kernel, scatters grouped by receiver or atomic."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FUSIONC_SCATTER", mode)
    reference = fusionc.loads(SMALL).interaction(dtype=dtype)
    kernel = fusionc.loads(SMALL, backend="triton").interaction(dtype=dtype)
    torch.nn.init.normal_(reference.weight)
    with torch.no_grad():
        kernel.weight.copy_(reference.weight)
    h, sh, src, dst, g = _graph(7, 23, 5, dtype)
    w = torch.randn(23, reference.input_weight_numel["w"], generator=g, dtype=dtype)
    kernel.weight.requires_grad_()
    for got, want in zip(_all_orders(kernel, (h, sh, w, src, dst)), _all_orders(reference, (h, sh, w, src, dst))):
        assert (got - want).abs().max() <= tolerance * want.abs().max()


HOPS = """\
diagram hop {
    in  h[node]   : 4x0e + 4x1o
    in  nbr[node] : index(node)
    out m[node]   : 4x0e + 4x1o
    let a = h mix uvw
    let b = a[nbr] mix uvw
    m = fuse(b[nbr], a) mix uvw
}
"""


def test_gathers_within_one_space_read_complete_rows(monkeypatch):
    """An index into its own space: rows gathered from a value the same rows computed (`a[nbr]`,
    then `b[nbr]`) are read only once every row of it is written: a native kernel, or a Triton
    launch, ends before such a gather. Native kernels, torch code and Triton give one result."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reference = fusionc.loads(HOPS).hop(dtype=torch.float64)
    kernel = fusionc.loads(HOPS, backend="triton").hop(dtype=torch.float64)
    torch.nn.init.normal_(reference.weight)
    with torch.no_grad():
        kernel.weight.copy_(reference.weight)
    g = torch.Generator().manual_seed(0)
    nodes = 40  # three program instances of the table kernel (16 rows each)
    h, nbr = torch.randn(nodes, 16, generator=g, dtype=torch.float64), torch.randint(0, nodes, (nodes,), generator=g)
    native = reference(h, nbr).detach()
    monkeypatch.setenv("FUSIONC_NATIVE", "0")
    torch_code = reference(h, nbr).detach()
    triton = kernel(h, nbr).detach()
    assert native.abs().max() > 1
    assert (native - torch_code).abs().max() < 1e-12 and (triton - torch_code).abs().max() < 1e-12


def test_the_triton_back_end_runs_a_graph_without_edges(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = fusionc.loads(SMALL, backend="triton").interaction(dtype=torch.float64)
    h, sh, src, dst, _ = _graph(3, 0, 0)
    out = module(h, sh, torch.zeros(0, module.input_weight_numel["w"], dtype=torch.float64), src, dst)
    assert out.shape == (3, h.shape[1]) and not out.any()


def test_the_interaction_is_equivariant():
    """Rotating the edge vectors (the spherical harmonics made from them) and every node's features
    rotates the output; its gradient with respect to the vectors (forces) rotates as a vector."""
    module = fusionc.loads(SMALL).interaction(dtype=torch.float64)
    h, _, src, dst, g = _graph(6, 20, 2)
    vectors = torch.randn(20, 3, generator=g, dtype=torch.float64)
    w = torch.randn(20, module.input_weight_numel["w"], generator=g, dtype=torch.float64)
    with default_dtype(torch.float64):  # e3nn builds its Wigner D matrices in the default dtype
        angles = [torch.tensor(a, dtype=torch.float64) for a in (0.3, 1.1, -0.7)]
        node = o3.Irreps("2x0e + 2x1o + 2x2e").D_from_angles(*angles)
        turn = o3.angles_to_matrix(*angles)

    def run(vectors, h):
        vectors = vectors.clone().requires_grad_()
        sh = o3.spherical_harmonics("0e + 1o + 2e + 3o", vectors, True, normalization="component")
        out = module(h, sh, w, src, dst)
        (force,) = torch.autograd.grad(out.pow(2).sum(), vectors)
        return out.detach(), force

    out, force = run(vectors, h)
    rotated, rotated_force = run(vectors @ turn.T, h @ node.T)
    assert (rotated - out @ node.T).abs().max() < 1e-12 * max(1.0, float(out.abs().max()))
    assert (rotated_force - force @ turn.T).abs().max() < 1e-12 * max(1.0, float(force.abs().max()))


def test_a_graph_without_edges_gives_zeros():
    module = fusionc.loads(SMALL).interaction(dtype=torch.float64)
    h, sh, src, dst, _ = _graph(3, 0, 0)
    out = module(h, sh, torch.zeros(0, module.input_weight_numel["w"], dtype=torch.float64), src, dst)
    assert out.shape == (3, h.shape[1]) and not out.any()


def test_bad_graph_inputs_name_the_input():
    module = fusionc.loads(SMALL).interaction(dtype=torch.float64)
    h, sh, src, dst, g = _graph(5, 9, 3)
    w = torch.randn(9, module.input_weight_numel["w"], generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"input 'src' points at rows of 'node', which has 5, but has values from .* to 5"):
        module(h, sh, w, torch.where(src == src[0], 5, src), dst)
    with pytest.raises(ValueError, match=r"input 'dst' points at rows of 'node', which has 5, but has values from -1"):
        module(h, sh, w, src, torch.where(dst == dst[0], -1, dst))
    with pytest.raises(ValueError, match=r"inputs 'sh' and 'w' both have rows in 'edge', but 9 and 8 of them"):
        module(h, sh, w[:8], src, dst)
    with pytest.raises(ValueError, match=r"inputs 'sh' and 'dst' both have rows in 'edge', but 9 and 8"):
        module(h, sh, w, src, dst[:8])
    with pytest.raises(ValueError, match=r"input 'src' must be an integer tensor of shape \(n_edge,\)"):
        module(h, sh, w, src.double(), dst)
    with pytest.raises(ValueError, match=r"input 'h' must have shape \(n_node, 18\), got \(5, 17\)"):
        module(h[:, :17], sh, w, src, dst)


def test_the_readme_example_is_the_one_checked_here():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    assert INTERACTION in readme
