"""Rich renderings of reports for a terminal (the CLI and the demo).

``report_blocks`` (the default) gives each campaign a block of two group
columns and a few lines, so a report reads at 80 columns; ``report_table``
is the one-row-per-campaign table for wide terminals (``--wide``).
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cleanroom.federated.attribution.report import AttributionReport, CampaignResult
from cleanroom.federated.lookalike.report import LookalikeReport

_MISSING = "-"


def _count(value: float | None) -> str:
    return _MISSING if value is None else f"{value:,.0f}"


def _money(value: float | None) -> str:
    return _MISSING if value is None else f"{value:,.2f}"


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return _MISSING
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _ratio(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"


def _interval(ci: tuple[float, float] | None) -> str:
    return _MISSING if ci is None else f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"


def _heading(report: AttributionReport) -> str:
    w, dp = report.windows, report.dp
    privacy = "no DP" if dp.mechanism == "off" else f"{dp.mechanism} DP, epsilon {dp.epsilon:g}"
    threshold = report.aggregation_threshold
    return (
        f"report {report.report_id}\n"
        f"conversions {report.conversions_name} · click {w.click_days}d, view {w.view_days}d"
        f" · {privacy}" + ("" if threshold is None else f" · threshold {threshold}")
    )


def _block(c: CampaignResult) -> RenderableType:
    title = Text(c.campaign_id, style="bold")
    if c.suppressed:
        note = "  suppressed: a group has fewer users than the aggregation threshold"
        return Group(title, Text(f"{note}\n  spend {_money(c.spend)}\n"))
    groups = Table(box=None, pad_edge=False)
    groups.add_column("", style="dim")
    groups.add_column("exposed", justify="right")
    groups.add_column("holdout", justify="right")
    e, h = c.exposed, c.holdout
    groups.add_row("users", _count(e.users), _count(h.users))
    groups.add_row("converters", _count(e.converters), _count(h.converters))
    groups.add_row("conversions", _count(e.conversions), _count(h.conversions))
    groups.add_row("revenue", _money(e.revenue), _money(h.revenue))
    groups.add_row("rate", _pct(e.rate), _pct(h.rate))
    lift = _pct(c.lift, signed=True)
    if c.lift_ci95 is not None:
        lift += f" {_interval(c.lift_ci95)} (95%)"
    lines = Text(
        f"  lift {lift}, incremental converters {_count(c.incremental_converters)}\n"
        f"  last touch: {_count(c.attributed_conversions)} conversions,"
        f" {_money(c.attributed_revenue)} revenue\n"
        f"  spend {_money(c.spend)}, iROAS {_ratio(c.iroas)}\n"
    )
    return Group(title, groups, lines)


def report_blocks(report: AttributionReport) -> RenderableType:
    """One block per campaign: fits 80 columns."""
    parts: list[RenderableType] = [Text(_heading(report) + "\n")]
    if not report.campaigns:
        parts.append(Text("no campaigns"))
    parts += [_block(c) for c in report.campaigns]
    return Group(*parts)


def report_table(report: AttributionReport) -> Table:
    """One row per campaign, every number in its own column (about 140 columns wide)."""
    table = Table(title=_heading(report))
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
        table.add_column(col, justify="left" if col == "campaign" else "right", no_wrap=True)
    for c in report.campaigns:
        e, h = c.exposed, c.holdout
        table.add_row(
            c.campaign_id + (" (suppressed)" if c.suppressed else ""),
            _count(e.users),
            _count(e.conversions),
            _money(e.revenue),
            _count(h.users),
            _count(h.conversions),
            _pct(c.lift, signed=True),
            _interval(c.lift_ci95),
            _count(c.attributed_conversions),
            _money(c.attributed_revenue),
            _ratio(c.iroas),
        )
    return table


def lookalike_table(report: LookalikeReport) -> RenderableType:
    """A lookalike package: what it was made from, its quality, its tiers (80 columns)."""
    privacy = report.privacy
    dp = f"label-DP eps={privacy.epsilon:g}" if privacy.epsilon else "no label-DP"
    if report.mode == "he-score":  # a brand model scored: nothing matched or trained
        source = f"model {report.model} · partner {report.partner} · HE scoring"
        counts = f"scored {_count(report.scored)} · {report.features} features"
    else:
        source = f"audience {report.audience} · partner {report.partner} · {dp}"
        counts = (
            f"offered {_count(report.offered)} · matched {_count(report.intersection)}"
            f" · seeds {_count(report.seeds)} · holdout AUC {_ratio(report.auc)}"
        )
    heading = Text.assemble(
        ("Lookalike package ", "bold"),
        (report.report_id, "bold"),
        f"\n{report.mode} · {source}",
        f"\n{counts}",
    )
    table = Table(show_edge=False, pad_edge=False)
    for name in ("tier", "users", "recall", "lift"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    for tier in report.tiers:
        lift = _MISSING if tier.lift is None else f"{tier.lift:.2f}x"
        table.add_row(f"top {tier.percent:g}%", _count(tier.size), _pct(tier.recall), lift)
    return Group(heading, table)
