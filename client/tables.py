"""Rich renderings of attribution reports for a terminal (the CLI and the demo)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def report_table(report: dict[str, Any]) -> Any:
    w = report.get("windows", {})
    table = Table(
        title=f"report {report.get('report_id', '')}"
        f" (click {w.get('click_days')}d, view {w.get('view_days')}d)"
    )
    for col in (
        "campaign",
        "exp users",
        "exp conv",
        "exp revenue",
        "hold users",
        "hold conv",
        "lift",
        "95% CI",
        "attributed",
        "attr revenue",
        "iROAS",
    ):
        table.add_column(col, justify="right")

    def fmt(v: Any, spec: str = "") -> str:
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    for c in report.get("campaigns", []):
        e, h = c.get("exposed") or {}, c.get("holdout") or {}
        ci = c.get("lift_ci95")
        table.add_row(
            str(c["campaign_id"]) + (" (suppressed)" if c.get("suppressed") else ""),
            fmt(e.get("users")),
            fmt(e.get("conversions")),
            fmt(e.get("revenue"), ",.2f"),
            fmt(h.get("users")),
            fmt(h.get("conversions")),
            fmt(c.get("lift"), ".1%"),
            f"[{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "-",
            fmt(c.get("attributed_conversions")),
            fmt(c.get("attributed_revenue"), ",.2f"),
            fmt(c.get("iroas"), ".2f"),
        )
    return table
