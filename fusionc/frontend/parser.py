"""Parse `.fus` text into the syntax tree, with errors that point at the text."""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

import lark

from fusionc.errors import FusionError, Span
from fusionc.frontend import ast
from fusionc.ir.irreps import Irreps

_READABLE = {
    "NAME": "a name", "INT": "an integer", "IRREPS": "irreps such as 32x0e + 1o",
    "MODE": "a mix mode (uvw, uvu, uuu, uvuv or none)", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "COLON": "':'",
    "EQUAL": "'='", "PLUS": "'+'", "COMMA": "','", "SEMICOLON": "';'",
    "$END": "end of file",
}


def grammar_text() -> str:
    """The grammar shipped in the wheel (or, in a source checkout, `grammar/fusion.lark`)."""
    try:
        return (resources.files("fusionc") / "grammar" / "fusion.lark").read_text()
    except FileNotFoundError:
        return (Path(__file__).resolve().parents[2] / "grammar" / "fusion.lark").read_text()


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _span(meta_or_token) -> Span:
    return Span(meta_or_token.line, meta_or_token.column, meta_or_token.end_line, meta_or_token.end_column)


def _describe(names: set[str]) -> str:
    parser = _lark()
    words = set()
    for name in names:
        if name in _READABLE:
            words.add(_READABLE[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
            words.add(f"'{pattern.value}'" if isinstance(pattern, lark.lexer.PatternStr) else name.lower())
        except KeyError:
            words.add(name.lower())
    return ", ".join(sorted(words))


def _end_of(source: str) -> Span:
    """Just after the last line that holds code (not blank, not only a comment)."""
    lines = source.split("\n")
    for number in range(len(lines), 0, -1):
        code = lines[number - 1].split("#")[0].rstrip()
        if code:
            return Span(number, len(code) + 1)
    return Span(1, 1)


#: A summand of an irreps string as far as it reaches: '8x1y' whole, not '8x1' and then 'y'.
_SUMMAND = re.compile(r"(?:([0-9]+)[ \t]*x[ \t]*)?(\w*)")
_GAP = re.compile(r"(?:\s|#[^\n]*)*")


def _position(source: str, offset: int) -> Span:
    return Span(source.count("\n", 0, offset) + 1, offset - source.rfind("\n", 0, offset))


def _not_an_irrep(mul: str | None, word: str, so3: bool) -> str:
    """Why a summand, `mul`x`word`, is not an irrep (of SO(3) when `so3`, which has no parity)."""
    degree = re.match(r"[0-9]*", word).group(0)
    if not degree:
        one, two = ("1", "(0 + 1)") if so3 else ("1o", "(0e + 1o)")
        return (f"after '{mul}x' comes an irrep, as in {mul}x{one}, or a group, as in {mul}x{two}" if mul
                else "an irrep is a degree l, as in 0, 1 or 32x2" if so3
                else "an irrep is a degree l and a parity, as in 0e, 1o or 32x2e")
    parity, written = word[len(degree)], f"{mul}x{degree}" if mul else degree
    if so3:
        return f"SO(3) irreps are degrees alone, as in {written}"
    if parity not in "eo":
        return f"'{parity}' is not a parity; write {written}e (even) or {written}o (odd)"
    return f"nothing may follow the parity in {written}{parity}"


def _bad_summand(source: str, offset: int) -> FusionError | None:
    """The first summand, from `offset` to the end of the irreps there, that is not an irrep."""
    pos, grouped = offset, False
    while True:
        pos = _GAP.match(source, pos).end()
        m = _SUMMAND.match(source, pos)
        after = _GAP.match(source, m.end()).end()
        if m.group(1) and not m.group(2) and not grouped and source.startswith("(", after):
            pos, grouped = after + 1, True
            continue
        if not re.fullmatch(r"[0-9]+[eo]?", m.group(2)):
            if not m.group(0):  # nothing like an irrep here ('+ +', '()'): the irreps parser says what is missing
                return None
            start = _position(source, pos)
            so3 = re.search(r"^\s*group\s+SO3\b", source, re.MULTILINE) is not None
            return FusionError(f"'{m.group(0)}' is not an irrep: {_not_an_irrep(m.group(1), m.group(2), so3)}",
                               Span(start.line, start.column, start.line, start.column + len(m.group(0))))
        pos = after
        if grouped and source.startswith(")", pos):
            pos, grouped = _GAP.match(source, pos + 1).end(), False
        if not source.startswith("+", pos):
            return None
        pos += 1


def _irreps_before(source: str, offset: int) -> bool:
    """Whether irreps end at `offset`, after a declaration's ':' or a fusion's '->'."""
    ends = [at + len(mark) for mark in (":", "->") if (at := source.rfind(mark, 0, offset)) >= 0]
    if not ends:
        return False
    text = re.sub(r"#[^\n]*", "", source[max(ends):offset]).strip()
    try:
        Irreps.parse(text, check_parity=False)
    except FusionError:
        return False
    return True


def _irreps_diagnosis(source: str, offset: int, expected: set[str]) -> FusionError | None:
    """Why the text at `offset`, where lark found no irreps token, is not irreps.

    lark takes irreps as one token, as long as every summand is an irrep: at '8x1y' the token
    ends before it ('in x : 2e + 8x1y' then fails at the '+'), or never starts ('in x : 8x1y').
    The summand that is not an irrep is named, whole; failing that, the irreps parser says why.
    """
    before = source[:offset].rstrip()
    if source.startswith("+", offset) and "PLUS" not in expected and _irreps_before(source, offset):
        start = offset + 1  # the summands after irreps that lark could not continue
    elif before.endswith("+") and source[offset:offset + 1].isdigit() and _irreps_before(source, len(before) - 1):
        start = offset  # a summand after irreps and a '+' that lark read as a sum of terms
    elif "IRREPS" in expected and source[offset:offset + 1].isdigit():
        start = offset
    else:
        return None
    if bad := _bad_summand(source, start):
        return bad
    start = _GAP.match(source, start).end()
    rest = source[start:].split("\n")[0].split("#")[0]
    try:
        Irreps.parse(rest.rstrip(), span=_position(source, start), check_parity=False)
    except FusionError as exc:
        return exc
    return None


def _syntax_error(exc: lark.exceptions.UnexpectedInput, source: str) -> FusionError:
    expected = set(getattr(exc, "allowed", None) or getattr(exc, "expected", None) or ())
    offset = getattr(exc, "pos_in_stream", None)
    if offset is not None and (diagnosis := _irreps_diagnosis(source, offset, expected)):
        return diagnosis
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        found = repr(exc.char)
        message = f"unexpected character {found}"
        if exc.allowed:
            message += f"; expected {_describe(set(exc.allowed))}"
        return FusionError(message, Span(exc.line, exc.column))
    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        return FusionError(f"unexpected end of file; expected {_describe(set(exc.expected))}", _end_of(source))
    assert isinstance(exc, lark.exceptions.UnexpectedToken)
    token = exc.token
    if token.type == "$END":
        return FusionError(f"unexpected end of file; expected {_describe(set(exc.expected))}", _end_of(source))
    return FusionError(f"unexpected {token.value!r}; expected {_describe(set(exc.expected))}",
                       Span(token.line, token.column, token.end_line, token.end_column))


class _ToAst(lark.Transformer):
    def NAME(self, token):  # noqa: N802 (lark's terminal callback names)
        return ast.Name(str(token), _span(token))

    def MODE(self, token):  # noqa: N802
        return ast.Name(str(token), _span(token))

    def INT(self, token):  # noqa: N802
        if len(token) > 18:  # past any size a diagram can use (and Python's 4,300-digit conversion limit)
            raise FusionError(f"the number {token[:8]}… has {len(token)} digits; fusionc reads at most 18",
                              _span(token))
        return int(token)

    def IRREPS(self, token):  # noqa: N802
        return ast.IrrepsText(str(token), _span(token))

    def irreps(self, children):
        return children[0]

    @lark.v_args(meta=True)
    def weights_type(self, meta, children):
        return ast.WeightsType(_span(meta))

    @lark.v_args(meta=True)
    def index_type(self, meta, children):
        (what,) = children
        return ast.IndexType(None, what, _span(meta)) if isinstance(what, ast.Name) else \
            ast.IndexType(what, None, _span(meta))

    def space(self, children):
        return children[0]

    def assign(self, children):
        return str(children[0]) == "+="

    @lark.v_args(meta=True)
    def in_decl(self, meta, children):
        name, space, kind = children
        return ast.InDecl(name, kind, _span(meta), space)

    @lark.v_args(meta=True)
    def out_decl(self, meta, children):
        name, space, irreps = children
        return ast.OutDecl(name, irreps, _span(meta), space)

    @lark.v_args(meta=True)
    def let_stmt(self, meta, children):
        name, index, accumulate, expr = children
        return ast.LetStmt(name, expr, _span(meta), index, accumulate)

    @lark.v_args(meta=True)
    def assign_stmt(self, meta, children):
        name, index, accumulate, expr = children
        return ast.AssignStmt(name, expr, _span(meta), index, accumulate)

    @lark.v_args(meta=True)
    def operand(self, meta, children):
        return ast.Operand(children[0], children[1], _span(meta))

    @lark.v_args(meta=True)
    def expr(self, meta, children):
        return ast.Expr(tuple(children), _span(meta))

    def operands(self, children):
        return tuple(children)

    def fuse_options(self, children):
        return tuple(children)

    @lark.v_args(meta=True)
    def option(self, meta, children):
        return ast.Option(children[0], children[1], _span(meta))

    def target(self, children):
        return children[0]

    @lark.v_args(meta=True)
    def fuse_term(self, meta, children):
        operands, options, target, mix = children
        return ast.FuseTerm(operands, options or (), target, mix, _span(meta))

    @lark.v_args(meta=True)
    def name_term(self, meta, children):
        return ast.NameTerm(children[0], children[1], _span(meta))

    def by_clause(self, children):
        return children[0]

    def per_clause(self, children):
        return children[0]

    @lark.v_args(meta=True)
    def mix(self, meta, children):
        return ast.Mix(children[0], children[1], children[2], _span(meta))

    @lark.v_args(meta=True)
    def diagram(self, meta, children):
        return ast.DiagramDef(children[0], tuple(children[1:]), _span(meta))

    def group_decl(self, children):
        return ("group", children[0])

    def convention_decl(self, children):
        return ("convention", children[0])

    def start(self, children):
        headers: dict[str, ast.Name] = {}
        diagrams = []
        for child in children:
            if isinstance(child, tuple):
                kind, name = child
                if kind in headers:
                    raise FusionError(f"'{kind}' is declared twice (first at line {headers[kind].span.line})",
                                      name.span)
                headers[kind] = name
            else:
                diagrams.append(child)
        return ast.Program(headers.get("group"), headers.get("convention"), tuple(diagrams))


def parse(source: str, filename: str = "<string>") -> ast.Program:
    """Parse a `.fus` source; raises `FusionError` located in `filename`.

    >>> parse("diagram d { in x : 0e  out y : 0e  y = x mix uvw }").diagrams[0].name.text
    'd'
    """
    try:
        tree = _lark().parse(source)
        return _ToAst().transform(tree)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(exc, source).located(source, filename) from None
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, FusionError):
            raise exc.orig_exc.located(source, filename) from None
        raise
