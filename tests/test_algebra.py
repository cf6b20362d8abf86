"""CG tables: exact sympy values against e3nn, intertwining, and the on-disk cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import slow_unless
from fusionc.algebra import cg
from fusionc.algebra.rotations import random_rotation, wigner_d

# l = 5 and 6 (exact sympy tables of up to 13 x 13 x 13) are the slow part: the quick subset stops at 4
TRIPLES = slow_unless([(a, b, c) for a in range(7) for b in range(7) for c in range(abs(a - b), min(a + b, 6) + 1)],
                      lambda t: max(t) <= 4)


@pytest.mark.parametrize("l1,l2,l3", TRIPLES, ids=lambda x: str(x))
def test_wigner_3j_equals_e3nn(l1: int, l2: int, l3: int) -> None:
    torch = pytest.importorskip("torch")
    e3nn_o3 = pytest.importorskip("e3nn.o3")
    reference = e3nn_o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
    assert np.abs(cg.wigner_3j(l1, l2, l3) - reference).max() < 1e-12


@pytest.mark.parametrize("l1,l2,l3", [(1, 1, 2), (2, 3, 4), (3, 3, 0), (4, 2, 5)])
def test_cg_intertwines_independent_rotations(l1: int, l2: int, l3: int) -> None:
    """C[i,j,k] D1[i,a] D2[j,b] D3[k,c] = C[a,b,c], with D built from ladder operators."""
    rotation = random_rotation(np.random.default_rng(l1 + 10 * l2 + 100 * l3))
    c = cg.wigner_3j(l1, l2, l3)
    d1, d2, d3 = (wigner_d(l, rotation) for l in (l1, l2, l3))
    assert np.abs(np.einsum("ijk,ia,jb,kc->abc", c, d1, d2, d3) - c).max() < 1e-13


def test_exact_values_are_radicals() -> None:
    entries = cg.exact_wigner_3j(1, 1, 1)
    assert {str(abs(v)) for v in entries.values()} == {"sqrt(6)/6"}  # the normalised Levi-Civita tensor
    assert len(entries) == 6


def test_frobenius_norm_is_one() -> None:
    for l1, l2, l3 in [(0, 0, 0), (2, 2, 2), (3, 4, 5)]:
        assert np.linalg.norm(cg.wigner_3j(l1, l2, l3)) == pytest.approx(1.0, abs=1e-14)


def test_triangle_violation_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not contain"):
        cg.wigner_3j(1, 1, 3)


def _fresh(monkeypatch: pytest.MonkeyPatch, root) -> None:
    monkeypatch.setenv("FUSIONC_CACHE_DIR", str(root))
    cg._wigner_3j_readonly.cache_clear()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered", "empty"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    _fresh(monkeypatch, tmp_path)
    good = cg.wigner_3j(2, 2, 2).copy()
    path = tmp_path / "cg-v1" / "2_2_2.json"
    text = path.read_text()
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "tampered":  # well-formed JSON whose values no longer match the checksum
        record = json.loads(text)
        record["payload"]["value"][0] = 0.5
        path.write_text(json.dumps(record))
    else:
        path.write_text("")
    _fresh(monkeypatch, tmp_path)
    assert np.array_equal(cg.wigner_3j(2, 2, 2), good)
    assert json.loads(path.read_text())["payload"]["value"] == json.loads(text)["payload"]["value"]


def test_cache_writes_leave_no_temporary_files(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh(monkeypatch, tmp_path)
    cg.wigner_3j(1, 2, 3)
    assert sorted(p.name for p in (tmp_path / "cg-v1").iterdir()) == ["1_2_3.json"]
