"""Parse `.fus` text into the syntax tree, with errors that point at the text."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark

from fusionc.errors import FusionError, Span
from fusionc.frontend import ast
from fusionc.ir.irreps import Irreps

_READABLE = {
    "NAME": "a name", "INT": "an integer", "IRREPS": "irreps such as 32x0e + 1o",
    "MODE": "a mix mode (uvw, uvu, uuu, uvuv or none)", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "COLON": "':'",
    "EQUAL": "'='", "PLUS": "'+'", "COMMA": "','", "SEMICOLON": "';'", "__ANON_0": "'->'",
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
    lines = source.splitlines()
    for number in range(len(lines), 0, -1):
        code = lines[number - 1].split("#")[0].rstrip()
        if code:
            return Span(number, len(code) + 1)
    return Span(1, 1)


def _irreps_diagnosis(source: str, line: int, column: int) -> FusionError | None:
    """Where the lexer found no irreps but the text starts like one, the irreps parser says why."""
    rest = source.splitlines()[line - 1][column - 1:].split("#")[0]
    if not rest[:1].isdigit():
        return None
    try:
        Irreps.parse(rest.rstrip(), span=Span(line, column), check_parity=False)
    except FusionError as exc:
        return exc
    return None


def _syntax_error(exc: lark.exceptions.UnexpectedInput, source: str) -> FusionError:
    expected = set(getattr(exc, "allowed", None) or getattr(exc, "expected", None) or ())
    if "IRREPS" in expected and exc.line > 0 and (diagnosis := _irreps_diagnosis(source, exc.line, exc.column)):
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
        return ast.IndexType(children[0], _span(meta))

    @lark.v_args(meta=True)
    def in_decl(self, meta, children):
        return ast.InDecl(children[0], children[1], _span(meta))

    @lark.v_args(meta=True)
    def out_decl(self, meta, children):
        return ast.OutDecl(children[0], children[1], _span(meta))

    @lark.v_args(meta=True)
    def let_stmt(self, meta, children):
        return ast.LetStmt(children[0], children[1], _span(meta))

    @lark.v_args(meta=True)
    def assign_stmt(self, meta, children):
        return ast.AssignStmt(children[0], children[1], _span(meta))

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
