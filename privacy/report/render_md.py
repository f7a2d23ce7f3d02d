"""Markdown rendering of the report document (plots linked as files under plots/)."""

from __future__ import annotations

from typing import Any

from dpfl.privacy.report.document import Block, Section


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _block(block: Block, plots: dict[str, str]) -> list[str]:
    kind = block[0]
    if kind == "h3":
        return [f"### {block[1]}", ""]
    if kind == "p":
        return [block[1], ""]
    if kind == "banner":
        return [f"> ## ⚠ {block[1]}", ">", *[f"> - **{line}**" for line in block[2]], ""]
    if kind == "note":
        return [f"> ⚠ **{block[1]}**", ""]
    if kind == "list":
        return [*[f"- {item}" for item in block[1]], ""]
    if kind == "kv":
        return [*[f"- **{k}**: {v}" for k, v in block[1]], ""]
    if kind == "table":
        return _table(block[1], block[2])
    if kind == "img":
        return [f"![{block[2]}]({plots[block[1]]})", ""] if block[1] in plots else []
    if kind == "code":
        return [f"```{block[1]}", block[2].rstrip("\n"), "```", ""]
    raise ValueError(f"unknown block kind {kind!r}")


def render_markdown(title: str, sections: list[Section], plots: dict[str, str]) -> str:
    """The report as GitHub-flavoured markdown; ``plots`` maps plot names to paths relative to report.md."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _block(block, plots)
    return "\n".join(lines).rstrip("\n") + "\n"
