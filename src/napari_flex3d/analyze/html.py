"""One self-contained HTML page: headings, paragraphs, tables and PNGs embedded as base64.

A page is a list of blocks, each a ``(kind, content)`` pair: ``("h2", text)``, ``("p",
text)``, ``("warn", text)``, ``("table", DataFrame)``, ``("img", png path)``. Every text,
including table cells and column names that come from users' files, is HTML-escaped, so a
column called ``<script>`` shows as text. Nothing is fetched when the page is opened (no
scripts, no external style sheets), so it works on a cluster's file browser. Imports the standard library, pandas (the tables it
is given) and ``io.atomic`` (the write).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..io.atomic import write_text

__all__ = ["render_page", "write_page"]

_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}
th{background:#eee}.warn{background:#fdd;border-left:4px solid #c00;padding:0.4em}img{max-width:100%}
.ok{background:#dfd;border-left:4px solid #080;padding:0.4em}"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(frame, max_rows: int = 60) -> str:
    cols = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.head(max_rows).itertuples(index=False):
        body.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    more = f"<p>… {len(frame) - max_rows} more rows in the CSV.</p>" if len(frame) > max_rows else ""
    return f"<table><tr>{cols}</tr>{''.join(body)}</table>{more}"


def _image(path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}"></p>'


def render_page(title: str, blocks: list) -> str:
    """The page's HTML text (see the module docstring for ``blocks``)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for kind, content in blocks:
        if kind in ("h2", "h3"):
            parts.append(f"<{kind}>{html.escape(str(content))}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(str(content))}</p>")
        elif kind in ("warn", "ok"):
            parts.append(f"<p class='{kind}'>{html.escape(str(content))}</p>")
        elif kind == "table":
            parts.append(_table(content))
        elif kind == "img":
            parts.append(_image(content))
        else:
            raise ValueError(f"unknown report block kind {kind!r}")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path, title: str, blocks: list) -> Path:
    """Write :func:`render_page` to ``path`` (UTF-8)."""
    path = Path(path)
    return write_text(path, render_page(title, blocks))
