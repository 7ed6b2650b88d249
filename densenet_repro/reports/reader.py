"""What a reader checks on a rendered page, as code: `problems(html_text)` lists what would mislead.

- a <title> that names the report (not nbconvert's "Notebook");
- a link back to the index (report pages);
- no pandas index column: no row-header cells in a table body, no raw `dataframe` table (the
  provenance block, a two-column list of labels, is the one exception);
- no "None" or "NaN" in a table cell ("—" with a footnote says why a value is missing);
- every verdict followed by its budget: wherever "holds", "does not hold" or "inconclusive" is said
  of a claim, the same clause names "at the <budget> budget" or "at every budget". Markdown cells
  written by hand are not checked (they define the verdicts); everything a notebook computed is.
"""

from __future__ import annotations

import re

VERDICT_RE = re.compile(r"\b(holds|does not hold|inconclusive)\b")
BUDGET_RE = re.compile(r"\bat (the (smoke|cpu|paper) budget|every budget)\b")
MISSING_RE = re.compile(r"\b(None|NaN|nan)\b")
CLAUSE_END_RE = re.compile(r";|\.(?=\s|$)|\n")
EXEMPT = (".densenet-repro-provenance",)  # label/value blocks, not data tables
BLOCKS = ["p", "li", "div", "ul", "ol", "h1", "h2", "h3", "h4", "body"]


def bare_verdicts(text: str) -> list[str]:
    """Each verdict in `text` whose clause names no budget, with some context."""
    text = " ".join(text.split())
    out = []
    for m in VERDICT_RE.finditer(text):
        clause = CLAUSE_END_RE.split(text[m.end():], maxsplit=1)[0]
        if not BUDGET_RE.search(clause):
            out.append(text[max(0, m.start() - 60):m.end() + 60])
    return out


def _computed_parts(soup) -> list:
    """The parts of a page a notebook computed: output areas of a report; the whole body of another page."""
    outputs = soup.select(".jp-OutputArea-output")
    return outputs if outputs else [soup.body or soup]


def problems(html_text: str, *, report: bool = True) -> list[str]:
    """What misleads a reader on this page (module doc); `report=False` for the index page."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html_text, features="html.parser")
    found = []
    title = soup.title.get_text(strip=True) if soup.title else ""
    if not title or title == "Notebook":
        found.append(f"no title that names the page (<title>{title}</title>)")
    if report and not soup.select("a[href='index.html']"):
        found.append("no link back to the index (index.html)")
    exempt = {id(t) for sel in EXEMPT for block in soup.select(sel) for t in block.find_all("table")}
    for table in soup.find_all("table"):
        if id(table) in exempt:
            continue
        if "dataframe" in (table.get("class") or []):
            found.append("a raw pandas table (show it with densenet_repro.tables.show)")
        body_headers = [th for tbody in table.find_all("tbody") for th in tbody.find_all("th")]
        if body_headers:
            found.append(f"an index column (row headers such as {body_headers[0].get_text(strip=True)!r})")
        for cell in table.find_all(["td", "th"]):
            text = cell.get_text(" ", strip=True)
            if MISSING_RE.search(text):
                found.append(f"a table cell says {MISSING_RE.search(text).group(0)!r}: {text[:80]!r}")
    for part in _computed_parts(soup):
        for cell in part.find_all(["td", "th"]):
            found += [f"a verdict without its budget: ...{v}..." for v in bare_verdicts(cell.get_text(" "))]
        for block in [part] + part.find_all(BLOCKS):
            if block.name in ("td", "th") or block.find_parent(["td", "th"]):
                continue
            own = " ".join(s for s in block.find_all(string=True) if s.find_parent(BLOCKS + ["td", "th"]) is block)
            found += [f"a verdict without its budget: ...{v}..." for v in bare_verdicts(own)]
    return list(dict.fromkeys(found))
