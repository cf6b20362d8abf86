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
    size: int
    span: Span


@dataclass(frozen=True)
class InDecl:
    name: Name
    type: IrrepsText | WeightsType | IndexType
    span: Span


@dataclass(frozen=True)
class OutDecl:
    name: Name
    irreps: IrrepsText
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
    operands: tuple[Name, ...]
    options: tuple[Option, ...]
    target: IrrepsText | None
    mix: Mix | None
    span: Span


@dataclass(frozen=True)
class NameTerm:
    operand: Name
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


@dataclass(frozen=True)
class AssignStmt:
    name: Name
    expr: Expr
    span: Span


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
