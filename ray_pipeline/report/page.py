"""The report's HTML: one self-contained page, its CSS inline, every figure an inline SVG, no
script and no link to fetch, so it opens offline from anywhere in the outputs tree."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}
nav ul{display:flex;flex-wrap:wrap;gap:.4em 1.2em;list-style:none;padding:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.winner td{background:#fff6d5;font-weight:600}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#555;max-width:680px}
p.note{color:#666;font-style:italic}
code{background:#f4f4f4;padding:0 3px}
"""


@dataclass(frozen=True)
class Section:
    """A top-level section: its anchor, heading and HTML body."""

    anchor: str
    title: str
    body: str


def text(value: str) -> str:
    """``value`` escaped for HTML."""
    return escape(value, quote=True)


def note(sentence: str) -> str:
    """A sentence that stands in for something the records cannot show."""
    return f'<p class="note">{text(sentence)}</p>'


def heading(title: str, level: int = 3, anchor: str | None = None) -> str:
    ident = f' id="{text(anchor)}"' if anchor else ""
    return f"<h{level}{ident}>{text(title)}</h{level}>"


def figure(name: str, svg: str, caption: str) -> str:
    """An inline SVG figure with its caption; ``name`` becomes its id (``fig-<name>``)."""
    return f'<figure id="fig-{text(name)}">{svg}<figcaption>{text(caption)}</figcaption></figure>'


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    marked: Sequence[bool] = (),
    ident: str | None = None,
) -> str:
    """A table of text cells (numbers right-aligned); rows flagged in ``marked`` get the
    ``winner`` class."""
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        mark = ' class="winner"' if i < len(marked) and marked[i] else ""
        cells = "".join(
            f'<td class="num">{text(c)}</td>' if _numeric(c) else f"<td>{text(c)}</td>" for c in row
        )
        body.append(f"<tr{mark}>{cells}</tr>")
    ident_attr = f' id="{text(ident)}"' if ident else ""
    return (
        f"<table{ident_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


NUMBER = re.compile(r"-?\d[\d.,]*(e[-+]?\d+)?( ± [\d.]+)?M?")
"""A cell right-aligned as a number: ``0.7649``, ``0.7649 ± 0.0137``, ``22.71M``."""


def _numeric(cell: str) -> bool:
    return NUMBER.fullmatch(cell) is not None


def params(values: dict[str, object]) -> str:
    """Hyperparameters as ``name=value, ...`` (floats to 4 significant digits)."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items())
    )


def document(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page: title, a table of contents, then each section."""
    toc = "".join(f'<li><a href="#{text(s.anchor)}">{text(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{text(s.anchor)}"><h2>{text(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{text(title)}</h1><p>{text(subtitle)}</p><nav><ul>{toc}</ul></nav>"
        f"</header>{body}</body></html>\n"
    )
