"""Self-contained HTML rendering: inline CSS, plots embedded as base64 PNG, no external resources.

A Content-Security-Policy forbids every external load, so the file can be mailed or archived and
still shows exactly what it showed when it was written.
"""

from __future__ import annotations

import base64
import html
import re

from dpfl.privacy.report.document import Block, Section

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f6f7f9;
       color: #1d2125; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7em; margin-top: 0.2em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 2em; }
h3 { margin-top: 1.4em; }
nav ul { columns: 2; font-size: 0.95em; list-style: none; padding-left: 0; }
nav a { color: #0b57d0; text-decoration: none; }
.banner { background: #b3261e; color: #fff; padding: 14px 20px; border-radius: 6px; margin: 12px 0;
          font-size: 1.05em; }
.banner strong.title { display: block; font-size: 1.6em; letter-spacing: 0.04em; margin-bottom: 6px; }
.banner ul { margin: 0; padding-left: 20px; }
.note { background: #fff4ce; border-left: 5px solid #e0a800; padding: 8px 14px; margin: 10px 0;
        font-weight: 600; }
.scroll { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #eef1f4; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #f8f9fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: #eef1f4; width: 230px; font-weight: 600; }
table.kv { width: 100%; }
code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; font-size: 0.92em; }
pre { background: #1f2328; color: #e6edf3; padding: 12px 14px; border-radius: 6px; overflow-x: auto; }
pre code { background: none; color: inherit; padding: 0; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.9em; }
"""
_NUMERIC = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|—)$")


def _inline(text: str) -> str:
    """Escape, then turn `code spans` into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _td(text: str) -> str:
    cls = ' class="num"' if _NUMERIC.match(str(text)) else ""
    return f"<td{cls}>{_inline(text)}</td>"


def _block(block: Block, images: dict[str, bytes]) -> str:
    kind = block[0]
    if kind == "h3":
        return f"<h3>{_inline(block[1])}</h3>"
    if kind == "p":
        return f"<p>{_inline(block[1])}</p>"
    if kind == "banner":
        items = "".join(f"<li>{_inline(line)}</li>" for line in block[2])
        return (f'<div class="banner" role="alert"><strong class="title">⚠ {_inline(block[1])}</strong>'
                f"<ul>{items}</ul></div>")
    if kind == "note":
        return f'<div class="note">⚠ {_inline(block[1])}</div>'
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>"
    if kind == "kv":
        rows = "".join(f"<tr><th>{_inline(k)}</th><td>{_inline(v)}</td></tr>" for k, v in block[1])
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if kind == "table":
        head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
        body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block[2])
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if kind == "img":
        if block[1] not in images:
            return ""
        data = base64.b64encode(images[block[1]]).decode("ascii")
        alt = html.escape(block[2], quote=True)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    if kind == "code":
        return f'<pre><code class="language-{html.escape(block[1])}">{html.escape(block[2])}</code></pre>'
    raise ValueError(f"unknown block kind {kind!r}")


def render_html(title: str, sections: list[Section], images: dict[str, bytes]) -> str:
    """One HTML file with everything inside; ``images`` maps plot names to PNG bytes."""
    nav = "".join(f'<li><a href="#s{i}">{_inline(s.title)}</a></li>' for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        body.append(f'<section id="s{i}"><h2>{_inline(s.title)}</h2>')
        body += [_block(b, images) for b in s.blocks]
        body.append("</section>")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head>",
        f"<body><main><h1>{html.escape(title)}</h1>",
        f"<nav><ul>{nav}</ul></nav>",  # titles carry their numbers
        *body,
        "</main></body></html>",
    ]) + "\n"
