"""The targets a bench checks: each bench keeps one ``TARGETS`` dict near its top, prints every target with
:func:`report` (one line each: measured value, limit, ``met`` or ``NOT MET``) and writes what :func:`report`
returns into its JSON output under ``targets``.

A target whose figure was not measured in a run (bf16 figures on a CPU without native bfloat16) prints
``not measured`` with the reason, never ``met``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """``figure op limit``: ``op`` is ``>=`` or ``<=``; ``stated`` says where the target is written down."""

    op: str
    limit: float
    unit: str
    stated: str

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.limit
        if self.op == "<=":
            return value <= self.limit
        raise ValueError(f"unknown comparison {self.op!r}")


def number(value: float) -> str:
    """Three significant figures, thousands separated from 1,000 on."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def verdict(target: Target, value: float | None, why: str = "") -> str:
    """``met``, ``NOT MET``, or ``not measured (why)`` for ``value`` against ``target``."""
    if value is None:
        return f"not measured ({why})" if why else "not measured"
    return "met" if target.met(value) else "NOT MET"


def check(
    targets: Mapping[str, Target], figures: Mapping[str, Any], missing: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every target against ``figures[name]``; a figure absent or None is not measured (``missing[name]``:
    why, for the figures a bench leaves out on purpose)."""
    missing = missing or {}
    out: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        value = figures.get(name)
        value = None if value is None else float(value)
        out[name] = {
            "value": value,
            "op": target.op,
            "limit": target.limit,
            "unit": target.unit,
            "verdict": verdict(target, value, missing.get(name, "")),
            "stated": target.stated,
        }
    return out


def line(name: str, row: Mapping[str, Any]) -> str:
    """``target NAME: VALUE UNIT OP LIMIT UNIT: met`` (or NOT MET / not measured)."""
    unit = f" {row['unit']}" if row["unit"] else ""
    value = "-" if row["value"] is None else number(row["value"]) + unit
    return f"target {name}: {value} {row['op']} {number(row['limit'])}{unit}: {row['verdict']}"


def report(
    targets: Mapping[str, Target],
    figures: Mapping[str, Any],
    missing: Mapping[str, str] | None = None,
    prefix: str = "",
) -> dict[str, dict[str, Any]]:
    """Print one :func:`line` per target (``prefix`` before each) and return the rows for the JSON output."""
    rows = check(targets, figures, missing)
    for name, row in rows.items():
        print(prefix + line(name, row))
    return rows
