"""A replay's comparison as something to look at: ``DIR/index.html`` and PNG charts.

``stream-learner replay --report DIR`` writes, from the reports of
:func:`stream_learner.replay.replay`:

- ``DIR/comparison.png``: the rolling primary metric of every policy over the input index,
  with each policy's drift detections (x) and retrain results (promoted: filled dot, kept:
  hollow dot) on its line;
- ``DIR/<policy>.png`` per policy (the name made file-safe: ``interval:1000`` is
  ``interval-1000.png``): its line with vertical markers for drift signals and retrain
  results, and a tick on the axis where each retrain started;
- ``DIR/index.html``: the comparison table and every chart, self-contained (inline CSS, the
  PNGs as data URIs, no script, no external link) so it can be mailed or attached to a
  ticket as one file.

The charts are drawn with matplotlib, an optional dependency (the ``report`` extra):
the service never needs it. Without it :func:`require_matplotlib` raises one
:class:`ConfigError` line saying what to install.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_learner.errors import ConfigError
from stream_learner.replay import PolicyReport

__all__ = [
    "INSTALL_HINT",
    "chart_names",
    "comparison_figure",
    "policy_figure",
    "prepare_dir",
    "require_matplotlib",
    "write_report",
]

INSTALL_HINT = (
    "--report draws its charts with matplotlib, which is not installed: "
    "pip install 'stream-learner[report]'"
)

#: Policies' colours (from matplotlib's tab10, without its red and green: in a policy's chart
#: red marks a drift and green a promotion).
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
)
_DPI = 100
_SIZE = (9.0, 3.6)  # inches: 900 x 360 px, readable on a page and small as a PNG
_LISTED = 20  # decisions listed per kind under a policy's chart


def require_matplotlib() -> None:
    """Fail before any work when the charts could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def prepare_dir(path: str | Path) -> Path:
    """``path`` as a directory to write into, created if missing; anything else is one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--report {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--report {path}: cannot create the directory: {exc.strerror}") from None
    return path


def chart_names(policies: Iterable[str]) -> list[str]:
    """Each policy's PNG file name, in order: file-safe, unique (a policy given twice gets
    ``-2``), never ``comparison.png``."""
    taken = {"comparison", "index"}
    names = []
    for policy in policies:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", policy).strip("-.") or "policy"
        candidate, n = stem, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.lower())
        names.append(f"{candidate}.png")
    return names


def write_report(
    reports: Sequence[PolicyReport],
    out: str | Path,
    *,
    title: str = "Retraining policies compared",
    context: str = "",
    changes: Sequence[int] = (),
) -> Path:
    """Write the charts and the page for ``reports``; returns the page's path.

    ``context`` is a sentence under the title (what history, which model); ``changes`` are
    inputs where the history is known to change (a synthetic drift), drawn as a dotted line.
    """
    require_matplotlib()
    out = prepare_dir(out)
    names = chart_names(r.policy for r in reports)
    comparison = _png(comparison_figure(reports, changes))
    (out / "comparison.png").write_bytes(comparison)
    charts = []
    for i, report in enumerate(reports):
        charts.append(_png(policy_figure(report, COLOURS[i % len(COLOURS)], changes)))
        (out / names[i]).write_bytes(charts[i])
    page = out / "index.html"
    page.write_text(_page(reports, title, context, comparison, charts, names), encoding="utf-8")
    return page


# -- charts ------------------------------------------------------------------------------


def _figure():
    # Figure, not pyplot: no global state, no GUI backend; savefig picks Agg for PNG.
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("input (position in the history)")
    return fig, ax


def _png(fig) -> bytes:
    """The figure as a 256-colour PNG: a third of Agg's RGBA size for the same look (flat
    colours and anti-aliased lines), small enough to commit and to inline in the page."""
    from PIL import Image  # Pillow comes with matplotlib

    rgba = io.BytesIO()
    fig.savefig(rgba, format="png")
    image = Image.open(rgba).convert("RGB").quantize(colors=256)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)  # no text chunks: same reports, same bytes
    return out.getvalue()


def _metric_label(reports: Sequence[PolicyReport]) -> str:
    name = reports[0].metric_name if reports else ""
    return f"rolling {name}" if name else "rolling metric"


def _on_line(report: PolicyReport, inputs: Sequence[int]) -> list[float]:
    """The policy's rolling metric at ``inputs``, read off its sampled series."""
    import numpy as np

    xs, ys = report.series.get("input", []), report.series.get("rolling", [])
    if not xs:
        return [math.nan] * len(inputs)
    ys = np.asarray([math.nan if y is None else y for y in ys], dtype=float)
    return list(np.interp(inputs, xs, ys))


def _results(report: PolicyReport) -> tuple[list[int], list[int], list[int]]:
    """Inputs at which retrains started, and at which their result was promoted or kept."""
    started, promoted, kept = [], [], []
    by_action = {"retrain": started, "promote": promoted, "keep": kept}
    for d in report.decisions:
        where = by_action.get(d["action"])
        if where is not None:
            where.append(d["input"])
    return started, promoted, kept


def _drifts(report: PolicyReport) -> list[int]:
    return [s["input"] for s in report.signals if s["level"] == "drift"]


def _known_changes(ax, changes: Sequence[int]) -> None:
    for i, x in enumerate(changes):
        ax.axvline(
            x,
            color="black",
            linestyle=":",
            linewidth=1.2,
            label="known change" if i == 0 else "_nolegend_",
        )


def comparison_figure(reports: Sequence[PolicyReport], changes: Sequence[int] = ()):
    """Every policy's line on one chart (a matplotlib ``Figure``)."""
    from matplotlib.lines import Line2D

    fig, ax = _figure()
    ax.set_ylabel(_metric_label(reports))
    _known_changes(ax, changes)
    for i, report in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        s = report.series
        # Earlier lines wider: a policy that did the same as a later one still shows.
        width = 1.0 + 1.2 * (len(reports) - 1 - i) / max(len(reports) - 1, 1)
        ax.plot(s.get("input", []), _nan(s.get("rolling", [])), color=colour, linewidth=width)
        _, promoted, kept = _results(report)
        drifts = _drifts(report)
        ax.plot(drifts, _on_line(report, drifts), "x", color=colour, markersize=7, mew=1.6)
        ax.plot(promoted, _on_line(report, promoted), "o", color=colour, markersize=6)
        ax.plot(kept, _on_line(report, kept), "o", mfc="white", mec=colour, markersize=6)
    handles = [
        Line2D([], [], color=COLOURS[i % len(COLOURS)], label=r.policy)
        for i, r in enumerate(reports)
    ]
    handles += [
        Line2D([], [], marker="x", ls="", color="#444", mew=1.6, label="drift detected"),
        Line2D([], [], marker="o", ls="", color="#444", label="retrain promoted"),
        Line2D([], [], marker="o", ls="", mfc="white", mec="#444", label="retrain kept"),
    ]
    if changes:
        handles.append(Line2D([], [], color="black", ls=":", label="known change"))
    _legend_outside(ax, handles)
    return fig


def _legend_outside(ax, handles) -> None:
    # Right of the plot: a legend inside would hide the dip after a drift.
    ax.legend(
        handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )


def policy_figure(report: PolicyReport, colour: str = COLOURS[0], changes: Sequence[int] = ()):
    """One policy's line with full-height markers (a matplotlib ``Figure``)."""
    fig, ax = _figure()
    ax.set_title(report.policy, loc="left", fontsize=10)
    ax.set_ylabel(_metric_label([report]))
    _known_changes(ax, changes)
    s = report.series
    ax.plot(
        s.get("input", []),
        _nan(s.get("rolling", [])),
        color=colour,
        linewidth=1.2,
        label=_metric_label([report]),
    )
    axis = ax.get_xaxis_transform()  # x in data, y in axes fraction: full-height markers
    styles = {
        ("performance", "drift"): ("#d62728", "--", 1.3, "performance drift"),
        ("performance", "warning"): ("#ff9896", ":", 1.0, "performance warning"),
        ("data", "drift"): ("#9467bd", "-.", 1.0, "data drift"),
        ("data", "warning"): ("#c5b0d5", ":", 1.0, "data warning"),
    }
    for (kind, level), (c, ls, lw, label) in styles.items():
        xs = [g["input"] for g in report.signals if g["kind"] == kind and g["level"] == level]
        if xs:
            ax.vlines(xs, 0, 1, transform=axis, colors=c, linestyles=ls, linewidths=lw, label=label)
    started, promoted, kept = _results(report)
    if promoted:
        ax.vlines(
            promoted,
            0,
            1,
            transform=axis,
            colors="#2ca02c",
            linewidths=1.4,
            label="retrain promoted",
        )
    if kept:
        ax.vlines(
            kept, 0, 1, transform=axis, colors="#8c8c8c", linewidths=1.0, label="retrain kept"
        )
    if started:
        ax.plot(
            started,
            [0.0] * len(started),
            "^",
            transform=axis,
            color="#444",
            markersize=6,
            clip_on=False,
            label="retrain started",
        )
    handles, _ = ax.get_legend_handles_labels()
    _legend_outside(ax, handles)
    return fig


def _nan(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# -- the page ----------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       max-width: 1040px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
p.context { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
thead th { border-bottom: 2px solid #bbb; }
img { max-width: 100%; height: auto; }
ul.facts { padding-left: 1.2em; color: #333; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px;
          margin-right: .4em; vertical-align: baseline; }
footer { margin-top: 3em; color: #777; font-size: .85em; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f}"


def _table(reports: Sequence[PolicyReport]) -> str:
    name = html.escape(reports[0].metric_name if reports else "metric")
    head = (
        f"<tr><th>policy</th><th>{name}</th><th>{name} (last window)</th><th>retrains</th>"
        "<th>promoted</th><th>kept</th><th>drift signals</th><th>retrain time (s)</th>"
        "<th>events/s</th></tr>"
    )
    rows = []
    for i, r in enumerate(reports):
        _, _, kept = _results(r)
        swatch = f'<span class="swatch" style="background:{COLOURS[i % len(COLOURS)]}"></span>'
        rows.append(
            f"<tr><td>{swatch}{html.escape(r.policy)}</td><td>{_num(r.metric)}</td>"
            f"<td>{_num(r.rolling)}</td><td>{r.retrains}</td><td>{r.promoted}</td>"
            f"<td>{len(kept)}</td><td>{r.signals_total}</td><td>{r.retrain_s:.3f}</td>"
            f"<td>{_rate(r.events_per_s)}</td></tr>"
        )
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _listed(label: str, inputs: Sequence[int]) -> str:
    if not inputs:
        return ""
    shown = ", ".join(f"{x:,}" for x in inputs[:_LISTED])
    more = f" and {len(inputs) - _LISTED:,} more" if len(inputs) > _LISTED else ""
    return f"<li>{label} ({len(inputs):,}) at input {shown}{more}</li>"


def _facts(report: PolicyReport) -> str:
    started, promoted, kept = _results(report)
    kinds = Counter(f"{s['kind']} {s['level']}" for s in report.signals)
    signals = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    if report.signals_total > len(report.signals):
        signals += f" (first {len(report.signals):,} of {report.signals_total:,} shown)"
    items = [
        f"<li>drift signals: {html.escape(signals)}</li>",
        _listed("drift detected", _drifts(report)),
        _listed("retrain started", started),
        _listed("promoted", promoted),
        _listed("kept", kept),
    ]
    return f'<ul class="facts">{"".join(items)}</ul>'


def _time_span(reports: Sequence[PolicyReport]) -> str:
    ts = [t for r in reports for t in r.series.get("ts", []) if t is not None]
    if not ts:
        return ""

    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    return f"Event time {when(min(ts))} to {when(max(ts))} (as sampled for the charts)."


def _page(
    reports: Sequence[PolicyReport],
    title: str,
    context: str,
    comparison: bytes,
    charts: Sequence[bytes],
    names: Sequence[str],
) -> str:
    inputs = reports[0].inputs if reports else 0
    metric = reports[0].metric_name if reports else "metric"
    intro = (
        f"{inputs:,} inputs replayed once per policy. Charts: rolling {html.escape(metric)} "
        "(weighted over keys by labelled events, as in the table's last-window column) over "
        "the position in the history. " + html.escape(_time_span(reports))
    )
    sections = []
    for r, chart, name in zip(reports, charts, names, strict=True):
        alt = html.escape(f"rolling {metric} of {r.policy} with drift and retrain markers")
        sections.append(
            f"<section><h2>{html.escape(r.policy)}</h2>"
            f'<img src="{_data_uri(chart)}" alt="{alt}" '
            f'title="{html.escape(name)}">{_facts(r)}</section>'
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + (f'<p class="context">{html.escape(context)}</p>' if context else "")
        + f"<p>{intro}</p>"
        f"{_table(reports)}"
        f'<img src="{_data_uri(comparison)}" alt="rolling {html.escape(metric)} of every '
        'policy over the history" title="comparison.png">'
        + "".join(sections)
        + "<footer>Written by <code>stream-learner replay --report</code>. Metrics and counts "
        "are deterministic for a history and config; retrain time and events/s are "
        "measurements.</footer></body></html>\n"
    )
