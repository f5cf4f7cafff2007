"""Stage 6 of the report: blocks -> Markdown (GitHub), one self-contained HTML page, or LaTeX (booktabs).

HTML links every cell to the record files behind it (paths relative to the page) and greys out pairs
that are never compared; Markdown and LaTeX print the same text (greyed cells in italics).
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from benchmark.report.document import Block, Bullets, Cell, Heading, Image, Para, Section, Table


def _text(cell: Cell | str) -> str:
    return cell.text if isinstance(cell, Cell) else cell


def _muted(cell: Cell | str) -> bool:
    return isinstance(cell, Cell) and cell.muted


def _rel(path: str | Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out_dir)).as_posix()


# --------------------------------------------------------------------------------------- markdown

def _md_cell(cell: Cell | str) -> str:
    text = _text(cell).replace("|", "\\|").replace("\n", " ")
    return f"*{text}*" if _muted(cell) and text else text


def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ([f'<a id="{b.anchor}"></a>', ""] if b.anchor else []) + ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|")
            for row in b.rows:
                cells = [f"*{row.title}*"] + [""] * (len(b.header) - 1) if isinstance(row, Section) else \
                    [_md_cell(c) for c in row]
                lines.append("| " + " | ".join(cells) + " |")
            lines += ["", f"<sub>{b.legend}</sub>", ""]
        elif isinstance(b, Image):
            lines += [f"![{b.alt}]({_rel(b.path, out_dir)})", ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- html

def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\[([^\]]+)\]\(#([^)]+)\)", r'<a href="#\2">\1</a>', text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1360px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}td.r{text-align:right;white-space:nowrap}td.muted,td.muted a{color:#999}tr.section td{background:#fafafa;"
        "font-style:italic}td a{color:inherit;text-decoration:none;border-bottom:1px dotted #888}"
        ".runs{display:block;font-size:0.7em;color:#555;white-space:nowrap}.runs a{margin-right:0.4em}"
        ".scroll{overflow-x:auto;max-width:100%}td{vertical-align:top}"
        ".legend{font-size:0.8em;color:#555;max-width:60em}img{max-width:100%;display:block;margin:1em 0}"
        "code{background:#f3f3f3;padding:0 3px}")


def _colour(shade: float) -> str:
    """Red (0) -> yellow (0.5) -> green (1), light enough for dark text."""
    stops = ((0.0, (244, 165, 160)), (0.5, (255, 236, 170)), (1.0, (168, 219, 168)))
    for (x0, c0), (x1, c1) in zip(stops, stops[1:], strict=False):
        if shade <= x1:
            t = (shade - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1, strict=True))
    return "#" + "".join(f"{v:02x}" for v in stops[-1][1])


#: the run count ``fmt`` appends to a value, `` (n=3)``
_RUNS = re.compile(r" \((n=\d+)\)")


def _html_cell(cell: Cell | str, align: str, out_dir: Path) -> str:
    cls = ("r" if align == "r" else "l") + (" muted" if _muted(cell) else "")
    style = f' style="background:{_colour(cell.shade)}"' if isinstance(cell, Cell) and cell.shade is not None else ""
    text = _text(cell)
    body = _inline_html(text)
    if isinstance(cell, Cell) and cell.links:
        (label0, first), rest = cell.links[0], cell.links[1:]
        count = _RUNS.search(text) if rest else None
        if count:  # the run count moves to the line of run links under the value
            body = _inline_html(text[:count.start()] + text[count.end():])
        body = f'<a href="{html.escape(_rel(first, out_dir))}" title="{html.escape(label0)}">{body}</a>'
        if rest:  # every run, linked under the value: "n=3: seeds 0 1 2" (never a superscript read as an exponent)
            runs = [(label0, first), *rest]
            kind = label0.split()[0]
            compact = kind in ("seed", "record") and all(lab.split()[0] == kind for lab, _ in runs)
            body += (f'<span class="runs">{count.group(1) + ": " if count else ""}{kind + "s " if compact else ""}'
                     + " ".join(f'<a href="{html.escape(_rel(p, out_dir))}" title="{html.escape(lab)}">'
                                f'{html.escape(lab.split()[-1] if compact else lab)}</a>' for lab, p in runs) + "</span>")
    return f'<td class="{cls}"{style}>{body}</td>'


def render_html(blocks: list[Block], out_dir: Path) -> str:
    """One self-contained page: plots embedded as base64 PNG, cells linked to their records."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>unlearnable-bench leaderboard</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            parts.append(f"<h{b.level}{anchor}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            parts.append('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
                         + "</tr></thead><tbody>")
            for row in b.rows:
                if isinstance(row, Section):
                    parts.append(f'<tr class="section"><td colspan="{len(b.header)}">{html.escape(row.title)}</td></tr>')
                else:
                    parts.append("<tr>" + "".join(_html_cell(c, a, out_dir) for a, c in zip(align, row, strict=True))
                                 + "</tr>")
            parts.append(f'</tbody></table></div><p class="legend">{_inline_html(b.legend)}</p>')
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}">')
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in b.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ latex

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "∞": r"$\infty$",
        "×": r"$\times$", "–": "--", "−": "--", "·": r"$\cdot$", "<": r"$<$", ">": r"$>$", "|": r"$|$",
        "≤": r"$\leq$", "≥": r"$\geq$", "σ": r"$\sigma$", "ε": r"$\varepsilon$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "…": r"\dots{}"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _inline_tex(text: str) -> str:
    out = _tex(re.sub(r"\[([^\]]+)\]\(#[^)]+\)", r"\1", text))
    out = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", out)
    return re.sub(r"`([^`]+)`", r"\\texttt{\1}", out)


def _tex_cell(cell: Cell | str) -> str:
    text = _inline_tex(_text(cell))
    return f"\\textit{{{text}}}" if _muted(cell) and text else text


#: LaTeX column of an ``align`` letter: ``p`` is a wrapped text column (long lists)
_TEX_COLUMNS = {"l": "l", "r": "r", "p": "p{5cm}"}

#: shrink a table wider than the text to the text width (never enlarge a narrow one)
_TEX_FIT = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def render_latex(blocks: list[Block], out_dir: Path) -> str:
    """booktabs tables and figures; the preamble needs \\usepackage{booktabs,graphicx}."""
    lines = ["% Generated by `bench leaderboard --format latex`. Preamble needs:",
             "%   \\usepackage{booktabs}  % table rules",
             "%   \\usepackage{graphicx}  % wide tables are shrunk to the text width; figures", ""]
    title = ""
    for b in blocks:
        if isinstance(b, Heading):
            if b.level == 1:
                continue
            if b.level == 2:
                title = b.text
            lines += [f"\\subsection*{{{_inline_tex(b.text)}}}" if b.level == 2 else
                      f"\\paragraph{{{_inline_tex(b.text)}}}", ""]
        elif isinstance(b, Para):
            lines += [_inline_tex(b.text), ""]
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            cols = "".join(_TEX_COLUMNS.get(a, "l") for a in align)
            lines += ["\\begin{table}[t]", "\\centering", "\\small", _TEX_FIT, f"\\begin{{tabular}}{{{cols}}}",
                      "\\toprule", " & ".join(_tex(h) for h in b.header) + r" \\", "\\midrule"]
            for row in b.rows:
                lines.append(f"\\multicolumn{{{len(b.header)}}}{{l}}{{\\textit{{{_tex(row.title)}}}}} \\\\"
                             if isinstance(row, Section) else " & ".join(_tex_cell(c) for c in row) + r" \\")
            lines += ["\\bottomrule", "\\end{tabular}}",
                      f"\\caption{{{_inline_tex(title)}. {_inline_tex(b.legend)}}}", "\\end{table}", ""]
        elif isinstance(b, Image):
            lines += ["\\begin{figure}[t]", "\\centering", f"\\includegraphics[width=\\linewidth]{{{_rel(b.path, out_dir)}}}",
                      f"\\caption{{{_inline_tex(title)}: {_tex(b.alt)}.}}", "\\end{figure}", ""]
        elif isinstance(b, Bullets):
            lines += ["\\begin{itemize}"] + [f"  \\item {_inline_tex(item)}" for item in b.items] + ["\\end{itemize}", ""]
    return "\n".join(lines).rstrip() + "\n"
