"""The fleet report as one self-contained HTML page: a sortable table of every model, the summary, the chart.

Everything is in the page: the chart as an embedded PNG, the styles and a few lines of script that sort the
table when a column's heading is clicked. Every text that comes from a model, a job or AWS is HTML-escaped;
links are written only for ``https:`` and ``file:`` URLs.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_ml_batch.report import JobOutcome

#: the table's columns before the metrics, with how each reads from an outcome
_COLUMNS = ("model", "status", "duration (min)", "attempts", "exit code", "reason")
_LINK_SCHEMES = ("https://", "file:")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1a202c; }
h1 { font-size: 1.4em; }
pre { background: #f7fafc; padding: .8em; border: 1px solid #e2e8f0; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #e2e8f0; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #edf2f7; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td.status { color: #c53030; font-weight: bold; }
img { max-width: 100%; }
"""

# Sorts the table by the clicked column: numbers as numbers (a cell's data-sort), text as text; again: reversed.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var ascending = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(ascending ? "asc" : "desc");
    var key = function (row) {
      var cell = row.cells[column], value = cell.getAttribute("data-sort");
      return value === null ? cell.textContent : value;
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _text(value: Any) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _number_cell(value: float | int | None, shown: str | None = None) -> str:
    if value is None:
        return '<td class="num" data-sort="-1"></td>'
    return f'<td class="num" data-sort="{_text(value)}">{_text(shown if shown is not None else value)}</td>'


def _link(url: str | None, label: str) -> str:
    if not url or not url.startswith(_LINK_SCHEMES):
        return ""
    return f'<a href="{_text(url)}" rel="noopener noreferrer">{_text(label)}</a>'


def _row(outcome: JobOutcome, metrics: Sequence[str], log_url: str | None) -> str:
    minutes = None if outcome.duration_seconds is None else outcome.duration_seconds / 60
    cells = [
        f"<td>{_text(outcome.model_id)}</td>",
        f'<td class="status">{_text(outcome.status)}</td>',
        _number_cell(outcome.duration_seconds, None if minutes is None else f"{minutes:.1f}"),
        _number_cell(outcome.attempts),
        _number_cell(outcome.exit_code),
        f"<td>{_text(outcome.reason)}</td>",
    ]
    for name in metrics:
        value = outcome.metrics.get(name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        cells.append(_number_cell(value, f"{value:.4g}") if numeric else f"<td>{_text(value)}</td>")
    cells.append(f"<td>{_link(log_url, 'logs')}</td>")
    css = "" if outcome.succeeded else ' class="failed"'
    return f"<tr{css}>{''.join(cells)}</tr>"


def render_html(
    outcomes: Sequence[JobOutcome],
    *,
    title: str,
    summary: str,
    chart_png: bytes | None = None,
    chart_note: str | None = None,
    log_urls: Mapping[str, str] | None = None,
) -> str:
    """The page's text: ``title``, ``summary`` (:func:`~airflow_ml_batch.report.summarize`), the chart (a PNG's
    bytes, or ``chart_note`` saying why there is none) and one table row per outcome, with its log link
    from ``log_urls`` (by model id) and one column per metric."""
    log_urls = log_urls or {}
    metrics = sorted({name for outcome in outcomes for name in outcome.metrics})
    headings = "".join(f"<th>{_text(name)}</th>" for name in (*_COLUMNS, *metrics, "log"))
    rows = "\n".join(_row(outcome, metrics, log_urls.get(outcome.model_id)) for outcome in outcomes)
    if chart_png is not None:
        chart = f'<img alt="durations and metrics" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}">'
    else:
        chart = f"<p>{_text(chart_note or 'No chart.')}</p>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_text(title)}</h1>
<pre>{_text(summary)}</pre>
{chart}
<table class="sortable">
<thead><tr>{headings}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def write_html(outcomes: Sequence[JobOutcome], path: str | Path, **page: Any) -> Path:
    """Write :func:`render_html`'s page (``page``: its keyword arguments) to ``path``."""
    path = Path(path)
    path.write_text(render_html(outcomes, **page), encoding="utf-8")
    return path
