"""The report page: one row per model, everything escaped, the chart embedded, nothing loaded from elsewhere."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from airflow_ml_batch.report import JobOutcome
from airflow_ml_batch.report_html import render_html, write_html

OUTCOMES = [
    JobOutcome("a", "SUCCEEDED", "j1", 600.0, 1, exit_code=0, metrics={"mape": 0.1}),
    JobOutcome('<script>alert("x")</script>', "FAILED", "j2", 60.0, 2, exit_code=1, reason="<b>bad</b> & worse"),
    JobOutcome("c", "NOT_SUBMITTED"),
]


def test_one_row_per_model_with_its_metrics_and_log_link(tmp_path: Path) -> None:
    path = write_html(
        OUTCOMES,
        tmp_path / "report.html",
        title="Forecast",
        summary="3 models",
        log_urls={"a": "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:x"},
    )

    page = path.read_text()
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr") == 3
    assert '<td class="num" data-sort="0.1">0.1</td>' in body
    assert body.count("<a href=") == 1
    assert '<tr class="failed">' in body


def test_every_text_is_escaped_and_links_are_only_https() -> None:
    page = render_html(
        OUTCOMES,
        title="<title>",
        summary="a </pre><script>",
        log_urls={"c": "javascript:alert(1)"},
    )

    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page
    assert "javascript:" not in page
    assert page.count("<script>") == 1  # the page's own sorting script


def test_the_page_is_self_contained_with_the_chart_embedded() -> None:
    png = b"\x89PNG\r\n\x1a\nchart"

    page = render_html(OUTCOMES, title="t", summary="s", chart_png=png)

    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", page)


def test_without_a_chart_the_page_says_why() -> None:
    page = render_html(OUTCOMES, title="t", summary="s", chart_note="No chart: matplotlib is not installed")

    assert "<img" not in page
    assert "No chart: matplotlib is not installed" in page
