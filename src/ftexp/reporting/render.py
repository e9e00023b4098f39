"""A report's sections as one self-contained HTML page (plotly.js inlined once, no network needed
to open it) and as a Markdown summary (the same tables and facts, figures left to the page)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from ftexp.reporting.figures import FONT, Section, Table

_STATE_ORDER = ("complete", "pruned", "failed", "running", "waiting")

CSS = """
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:14px/1.5 FONT; }
header { background:#111827; color:#f9fafb; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:24px; font-weight:650; letter-spacing:-0.01em; }
header .sub { color:#9ca3af; font-size:13px; }
.chips { margin-top:14px; display:flex; gap:8px; flex-wrap:wrap; }
.chip { background:#1f2937; border:1px solid #374151; border-radius:999px; padding:3px 12px;
        font-size:12.5px; }
.chip b { color:#fff; }
nav { position:sticky; top:0; z-index:5; background:rgba(255,255,255,.95);
      border-bottom:1px solid var(--line);
      padding:10px 40px; display:flex; gap:18px; flex-wrap:wrap; font-size:13px; }
nav a { color:var(--muted); text-decoration:none; } nav a:hover { color:var(--accent); }
main { max-width:1320px; margin:0 auto; padding:24px 40px 60px; }
h2.group { margin:34px 0 6px; font-size:20px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:20px 24px;
          margin:18px 0; box-shadow:0 1px 2px rgba(0,0,0,.03); }
section h2 { margin:0 0 10px; font-size:17px; font-weight:650; }
.intro { color:var(--muted); margin:0 0 12px; }
.note { background:#fffbeb; border-left:3px solid #f59e0b; padding:8px 12px; margin:10px 0; color:#92400e;
        border-radius:4px; }
.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(220px, 1fr)); gap:10px; margin:6px 0; }
.fact { border:1px solid var(--line); border-radius:8px; padding:8px 12px; background:#fafafa; min-width:0; }
.fact .k { color:var(--muted); font-size:12px; }
.fact .v { font-weight:600; font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }
.fact.lead { background:#eff6ff; border-color:#bfdbfe; }
.tablewrap { overflow-x:auto; margin:8px 0; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:#f9fafb; font-weight:600; position:sticky; top:0; cursor:pointer; user-select:none; }
th:hover { color:var(--accent); }
tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.text { white-space:normal; min-width:260px; max-width:520px; }
td.param { font-family:ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px; }
tr.best td { background:#f0fdf4; font-weight:600; }
tr.best td:first-child::before { content:"★ "; color:#16a34a; }
td a { color:var(--accent); text-decoration:none; }
.state { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px; font-weight:600; }
.state.complete { background:#dcfce7; color:#166534; } .state.pruned { background:#fef3c7; color:#92400e; }
.state.failed { background:#fee2e2; color:#991b1b; }
.state.running, .state.waiting { background:#dbeafe; color:#1e40af; }
.figure { margin:6px 0 4px; min-width:0; }
ul.sentences { margin:8px 0 12px; padding-left:20px; } ul.sentences li { margin:3px 0; }
.figures.n2 { display:grid; grid-template-columns:1fr 1fr; gap:16px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:0 0 30px; }
""".replace("FONT", FONT)

# Click a column header to sort the table by it (numbers numerically, dashes last).
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  const key = r => { const t = r.cells[col].innerText.replace(/[★,]/g, '').trim();
                     const n = parseFloat(t); return t === '–' ? null : (isNaN(n) ? t : n); };
  rows.sort((a, b) => { const x = key(a), y = key(b); if (x === null) return 1; if (y === null) return -1;
    return (typeof x === typeof y ? (x > y) - (x < y) : String(x).localeCompare(String(y))) * dir; });
  rows.forEach(r => body.appendChild(r));
}));
"""


@dataclass
class Page:
    title: str
    subtitle: str
    chips: list[tuple[str, str]]
    groups: list[tuple[str, str, list[Section]]]  # (title, id prefix, sections)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def _table_html(table: Table) -> str:
    kinds = [c.kind for c in table.rows[0]] if table.rows else [""] * len(table.headers)
    head = "".join(f'<th class="num">{_e(h)}</th>' if k == "num" else f"<th>{_e(h)}</th>"
                   for h, k in zip(table.headers, kinds, strict=True))
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for cell in row:
            text = _e(cell.text)
            if cell.href:
                text = f'<a href="{_e(cell.href)}">{text}</a>'
            if cell.kind == "state":
                text = f'<span class="state {_e(cell.text)}">{text}</span>'
            kind = cell.kind if cell.kind in ("num", "param", "text") else ""
            cells.append(f'<td class="{kind}">{text}</td>' if kind else f"<td>{text}</td>")
        mark = ' class="best"' if i in table.marked else ""
        body.append(f"<tr{mark}>{''.join(cells)}</tr>")
    return (f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _figure_html(fig: Any) -> str:
    inner = fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                        config={"displaylogo": False, "responsive": True})
    return f'<div class="figure">{inner}</div>'


def _section_html(section: Section, prefix: str) -> str:
    parts = [f'<section id="{_e(prefix + section.id)}"><h2>{_e(section.title)}</h2>']
    if section.intro:
        parts.append(f'<p class="intro">{_e(section.intro)}</p>')
    if section.facts:
        facts = "".join(f'<div class="fact{" lead" if i < 2 else ""}"><div class="k">{_e(k)}</div>'
                        f'<div class="v">{_e(v)}</div></div>' for i, (k, v) in enumerate(section.facts))
        parts.append(f'<div class="facts">{facts}</div>')
    if section.sentences:
        items = "".join(f"<li>{_e(s)}</li>" for s in section.sentences)
        parts.append(f'<ul class="sentences">{items}</ul>')
    figures = "".join(_figure_html(f) for f in section.figures)
    if figures:
        parts.append(f'<div class="figures n{min(len(section.figures), 2)}">{figures}</div>')
    parts += [_table_html(t) for t in section.tables]
    parts += [f'<p class="note">{_e(n)}</p>' for n in section.notes]
    parts.append("</section>")
    return "\n".join(parts)


def to_html(page: Page) -> str:
    from plotly.offline import get_plotlyjs

    nav, body = [], []
    for title, prefix, sections in page.groups:
        if title:
            body.append(f'<h2 class="group" id="{_e(prefix + "group")}">{_e(title)}</h2>')
        for section in sections:
            label = section.title if not title or len(page.groups) == 1 else f"{title}: {section.title}"
            nav.append(f'<a href="#{_e(prefix + section.id)}">{_e(label)}</a>')
            body.append(_section_html(section, prefix))
    chips = "".join(f'<span class="chip">{_e(k)} <b>{_e(v)}</b></span>' for k, v in page.chips)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(page.title)}</title>
<style>{CSS}</style>
<script>{get_plotlyjs()}</script>
</head><body>
<header><h1>{_e(page.title)}</h1><div class="sub">{_e(page.subtitle)}</div>
<div class="chips">{chips}</div></header>
<nav>{''.join(nav)}</nav>
<main>
{chr(10).join(body)}
</main>
<footer>Made by ftexp.report. Self-contained: opens offline.</footer>
<script>{SORT_JS}</script>
</body></html>
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_md(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---:" if c.kind == "num" else "---" for c in table.rows[0]) + "|"
             if table.rows else "|" + "---|" * len(table.headers)]
    for i, row in enumerate(table.rows):
        cells = [_md_cell(c.text) for c in row]
        if i in table.marked:
            cells = [f"**{c}**" for c in cells]
            cells[0] = "★ " + cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(page: Page, html_name: str) -> str:
    lines = [f"# {page.title}", "", page.subtitle, "",
             " · ".join(f"{k}: **{v}**" for k, v in page.chips), ""]
    for title, _, sections in page.groups:
        if title:
            lines += [f"## {title}", ""]
        level = "###" if title else "##"
        for section in sections:
            lines += [f"{level} {section.title}", ""]
            if section.intro:
                lines += [section.intro, ""]
            if section.facts:
                lines += [f"- **{k}**: {v}" for k, v in section.facts] + [""]
            if section.sentences:
                lines += [f"- {s}" for s in section.sentences] + [""]
            for table in section.tables:
                lines += _table_md(table) + [""]
            if section.figures:
                lines += [f"_{len(section.figures)} figure(s) in [{html_name}]({html_name})._", ""]
            lines += [f"> {n}" for n in section.notes] + ([""] if section.notes else [])
    return "\n".join(lines).rstrip() + "\n"
