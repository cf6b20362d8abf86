"""The syntax tree: one frozen dataclass per grammar rule, each carrying its source span."""

from __future__ import annotations

from dataclasses import dataclass

from fusionc.errors import Span


@dataclass(frozen=True)
class Name:
    text: str
    span: Span


@dataclass(frozen=True)
class IrrepsText:
    """An irreps string as written; the type checker parses it (group-dependent)."""

    text: str
    span: Span


@dataclass(frozen=True)
class WeightsType:
    span: Span


@dataclass(frozen=True)
class IndexType:
    """`index(K)`: values in [0, K) (species); `index(space)`: rows of that space."""

    size: int | None
    space: Name | None
    span: Span


@dataclass(frozen=True)
class InDecl:
    name: Name
    type: IrrepsText | WeightsType | IndexType
    span: Span
    space: Name | None = None  # `in x[space] : …`


@dataclass(frozen=True)
class OutDecl:
    name: Name
    irreps: IrrepsText
    span: Span
    space: Name | None = None


@dataclass(frozen=True)
class Operand:
    """A value a term reads: `x`, or `x[i]`, row i[z] of x for each row z of the term."""

    name: Name
    index: Name | None
    span: Span


@dataclass(frozen=True)
class Mix:
    mode: Name
    by: Name | None
    per: Name | None
    span: Span


@dataclass(frozen=True)
class Option:
    key: Name
    value: int
    span: Span


@dataclass(frozen=True)
class FuseTerm:
    operands: tuple[Operand, ...]
    options: tuple[Option, ...]
    target: IrrepsText | None
    mix: Mix | None
    span: Span


@dataclass(frozen=True)
class NameTerm:
    operand: Operand
    mix: Mix | None
    span: Span


Term = FuseTerm | NameTerm


@dataclass(frozen=True)
class Expr:
    terms: tuple[Term, ...]
    span: Span


@dataclass(frozen=True)
class LetStmt:
    name: Name
    expr: Expr
    span: Span
    index: Name | None = None  # `let y[i] += …`: each row z of expr summed into row i[z] of y
    accumulate: bool = False  # `+=`


@dataclass(frozen=True)
class AssignStmt:
    name: Name
    expr: Expr
    span: Span
    index: Name | None = None
    accumulate: bool = False


Statement = InDecl | OutDecl | LetStmt | AssignStmt


@dataclass(frozen=True)
class DiagramDef:
    name: Name
    statements: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class Program:
    group: Name | None
    convention: Name | None
    diagrams: tuple[DiagramDef, ...]
