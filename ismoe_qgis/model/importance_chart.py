"""The seasonal-importance chart: its series, ticks and colours (shared with the dock's pyqtgraph chart) and
its matplotlib rendering (headless, thread-safe), used by ismoe:seasonalimportance and the evaluation report.

Uses the object-oriented ``matplotlib.figure.Figure`` API with the Agg canvas only:
no pyplot, no global figure state, no Qt. That is what a Processing algorithm needs,
since it runs in a worker thread where no QWidget may be created. :func:`chart_series`,
:func:`period_ticks` and :func:`period_range` are what the dock draws too, so both charts
draw the same thing. No qgis/PyQt import.
"""
from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np

from ..fileutil import atomic_output
from . import importance as imp
from .prediction_folder import ChartDataError

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------- chart series
@dataclass
class ChartSeries:
    factor: str
    colour: str
    x: np.ndarray
    lower: Optional[np.ndarray]   # None for lines; the stack below for stacked areas
    upper: np.ndarray             # the line / top of the area
    band_lower: Optional[np.ndarray] = None   # lines of an ensemble: mean - member sd (else None)
    band_upper: Optional[np.ndarray] = None   # lines of an ensemble: mean + member sd

    @property
    def has_band(self) -> bool:
        return self.band_lower is not None


BAND_ALPHA = 0.22   # opacity of the spread band (the factor's colour), both charts


def spread_label(members: Optional[int] = None) -> str:
    """Legend text of the spread band."""
    return "± member sd ({} members)".format(members) if members else "± member sd"


def chart_series(series: imp.PeriodSeries, stacked: bool = False) -> List[ChartSeries]:
    """What to draw for one region/period kind: one entry per factor (same colour everywhere).

    Lines: ``upper`` is the mean weight (NaN gaps kept); when the series carries an ensemble's
    ``spread`` (importance.csv of an ensemble prediction), ``band_lower``/``band_upper`` are
    mean -/+ spread (the members' standard deviation of the period's mean weight).
    Stacked areas: factors stacked in their order, missing values counted as 0, so the top
    edge is the weight sum (~1); no band (a stack of member spreads means nothing).
    """
    x = series.x()
    out = []
    base = np.zeros(len(x))
    spread = getattr(series, "spread", None)
    for j, f in enumerate(series.factors):
        y = series.mean[:, j].astype(float)
        if stacked:
            top = base + np.nan_to_num(y, nan=0.0)
            out.append(ChartSeries(f, imp.factor_colour(f), x, base.copy(), top))
            base = top
        elif spread is not None:
            sd = np.asarray(spread, dtype=float)[:, j]
            out.append(ChartSeries(f, imp.factor_colour(f), x, None, y, y - sd, y + sd))
        else:
            out.append(ChartSeries(f, imp.factor_colour(f), x, None, y))
    return out


_MONTH_MID_DOY = (16, 45, 75, 105, 136, 166, 197, 228, 258, 289, 319, 350)


def period_ticks(kind: str) -> List[Tuple[float, str]]:
    """Axis ticks (x, label) for a period kind: months, mid-month days on a day-of-year axis, seasons."""
    if kind == "month":
        return [(float(i + 1), imp.MONTH_ABBR[i]) for i in range(12)]
    if kind == "doy":
        return [(float(d), imp.MONTH_ABBR[i]) for i, d in enumerate(_MONTH_MID_DOY)]
    if kind == "season":
        return [(float(i + 1), s) for i, s in enumerate(imp.SEASONS)]
    raise ChartDataError("unknown period kind {!r}".format(kind))


def period_range(kind: str) -> Tuple[float, float]:
    return {"month": (0.5, 12.5), "doy": (0.0, 367.0), "season": (0.5, 4.5)}[kind]


PERIOD_TITLES = {"month": "month", "doy": "day of year", "season": "season"}


MAX_PANELS = 12


def _y_top(values: List[np.ndarray], stacked: bool) -> float:
    if stacked:
        return 1.02
    finite = [v[np.isfinite(v)] for v in values]
    top = max([float(v.max()) for v in finite if v.size] or [1.0])
    return min(1.02, max(0.1, math.ceil(top * 11) / 10))


def importance_figure(table: imp.ImportanceTable, kind: str = "month", stacked: bool = False,
                      regions: Optional[Sequence[str]] = None, title: Optional[str] = None,
                      max_panels: int = MAX_PANELS, dpi: int = 110, members: Optional[int] = None) -> "Figure":
    """One panel per region (at most ``max_panels``), one line/area per factor, shared legend.

    Lines of a series with an ensemble spread (importance.csv of an ensemble) get a translucent
    band mean ± spread in the factor's colour (``fill_between``), and the legend an entry
    "± member sd (``members`` members)", as in the dock.
    """
    regions = list(regions) if regions is not None else table.regions
    regions = [r for r in regions if kind in table.kinds(r)]
    if not regions:
        raise ChartDataError("No {} values to chart".format(kind))
    shown = regions[:max_panels]
    n = len(shown)
    ncols = 1 if n == 1 else (2 if n <= 4 else 3)
    nrows = int(math.ceil(n / ncols))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 if ncols == 1 else 4.2 * ncols, 3.6 + (nrows - 1) * 2.9 + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    handles = {}
    band_handle = None
    for i, region in enumerate(shown):
        ax = axes[i // ncols][i % ncols]
        series = table.get(region, kind)
        items = chart_series(series, stacked)
        for it in items:
            if stacked:
                h = ax.fill_between(it.x, it.lower, it.upper, color=it.colour, alpha=0.85, linewidth=0.6,
                                    edgecolor="white", label=it.factor, step=None)
            else:
                if it.has_band:
                    ok = np.isfinite(it.band_lower) & np.isfinite(it.band_upper)
                    b = ax.fill_between(it.x, it.band_lower, it.band_upper, where=ok, color=it.colour,
                                        alpha=BAND_ALPHA, linewidth=0, zorder=1)
                    b.set_gid("spread-" + it.factor)
                    band_handle = band_handle or b
                (h,) = ax.plot(it.x, it.upper, color=it.colour, linewidth=2.0, zorder=2,
                               marker="o" if kind != "doy" else None, markersize=3.5, label=it.factor)
            handles.setdefault(it.factor, h)
        ax.set_xticks([t for t, _ in period_ticks(kind)])
        ax.set_xticklabels([lab for _, lab in period_ticks(kind)], fontsize=8)
        ax.set_xlim(*period_range(kind))
        ax.set_ylim(0.0, _y_top([it.upper for it in items] + [it.band_upper for it in items if it.has_band],
                                stacked))
        ax.grid(True, alpha=0.3, linewidth=0.6)
        if n > 1 or region != imp.DEFAULT_REGION:
            ax.set_title(str(region), fontsize=10)
        if i % ncols == 0:
            ax.set_ylabel(table.title)
        if i // ncols == nrows - 1:
            ax.set_xlabel(PERIOD_TITLES.get(kind, kind))
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if title is None:
        title = "Seasonal expert importance{} ({}{})".format(
            ": variance shares" if table.measure == imp.VARIANCE_SHARE else "", PERIOD_TITLES.get(kind, kind),
            ", stacked" if stacked else "")
        if len(regions) > n:
            title += " - first {} of {} regions".format(n, len(regions))
    fig.suptitle(title, fontsize=11)
    names = [f for f in table.factors if f in handles]
    hs = [handles[f] for f in names]
    if band_handle is not None:
        from matplotlib.patches import Patch
        hs.append(Patch(facecolor="#555555", alpha=BAND_ALPHA * 1.5, linewidth=0))
        names.append(spread_label(members))
    fig.legend(hs, names, loc="lower center", ncol=min(len(hs), 6), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 0.95))
    return fig


def save_figure(fig: "Figure", path: str) -> str:
    """Save as PNG or SVG (by extension; anything else is PNG), atomically."""
    fmt = "svg" if path.lower().endswith(".svg") else "png"
    with atomic_output(path, "." + fmt) as tmp:
        fig.savefig(tmp, format=fmt)
    return path


def figure_svg(fig: "Figure") -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def write_html(table: imp.ImportanceTable, fig: "Figure", path: str, kind: str = "month",
               title: str = "Seasonal expert importance", source: str = "") -> str:
    """A self-contained HTML page: the chart (inline SVG) and the table of mean weights
    (season and month per region), the dominant factor in bold."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>{}</title>".format(html.escape(title)),
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
             "table{border-collapse:collapse;margin:0.6em 0 1.6em}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.sw{display:inline-block;"
             "width:0.9em;height:0.9em;margin-right:4px;vertical-align:middle}</style></head><body>",
             "<h1>{}</h1>".format(html.escape(title))]
    if source:
        parts.append("<p>Source: <code>{}</code></p>".format(html.escape(source)))
    if table.measure == imp.VARIANCE_SHARE:
        parts.append("<p>Variance share of each factor: at each pixel, the factor's share of the variance of what "
                     "it contributes to SM over the period's days (SM = mu + the sum of the contributions; "
                     "additive and gated models), averaged over the region's pixels; n = number of pixels. A "
                     "contribution that is constant at a pixel (a level, not a driver) has no share.</p>")
    else:
        parts.append("<p>Mean weight of each factor, averaged over every valid pixel-day of the period; n = number "
                     "of values averaged. What a weight is depends on the model's MIXTURE (prediction.json "
                     "<code>weights_meaning</code>): with the additive and gated mixtures, the factor's share of "
                     "the squared departure of the contributions from their training means; with convex or scaled, "
                     "the router's softmax weight.</p>")
    parts.append(figure_svg(fig))
    for region in table.regions:
        for k in [k for k in ("season", kind if kind != "doy" else "month") if k in table.kinds(region)]:
            s = table.get(region, k)
            parts.append("<h3>{} - by {}</h3><table><tr><th class='l'>{}</th>".format(
                html.escape(str(region)), PERIOD_TITLES.get(k, k), k))
            for f in s.factors:
                parts.append("<th><span class='sw' style='background:{}'></span>{}</th>".format(
                    imp.factor_colour(f), html.escape(f)))
            parts.append("<th>n</th></tr>")
            for i, p in enumerate(s.periods):
                row = s.mean[i]
                best = int(np.nanargmax(row)) if np.isfinite(row).any() else -1
                cells = []
                for j, v in enumerate(row):
                    txt = "" if not np.isfinite(v) else "{:.3f}".format(v)
                    cells.append("<td>{}</td>".format("<b>{}</b>".format(txt) if j == best else txt))
                parts.append("<tr><td class='l'>{}</td>{}<td>{}</td></tr>".format(
                    html.escape(imp.period_label(k, p)), "".join(cells), int(s.n[i].max()) if s.n.size else 0))
            parts.append("</table>")
    parts.append("</body></html>")
    with atomic_output(path, ".html") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path
