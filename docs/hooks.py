"""mkdocs hook: pages' generated parts, so that measured numbers and the results schema cannot drift.

Two markers in a page's markdown are replaced when the site is built:

    <!-- csv: data/NAME.csv -->        the committed CSV as a table (integers with thousands
                                       separators, other cells as measured); `group=N` after the
                                       path blanks the first N cells where they repeat the row above
    <!-- columns: ResultRow -->        the columns of a results schema class in pibench/results.py
                                       (ResultRow: results.csv, LayerRow: layers.csv), each with
                                       its type and the comment it is declared with

A column declared without a comment is an error: the schema is the documentation.

The README, which GitHub shows as it is, holds its tables under a third marker that stays in
place, followed by the table it names, some of a committed CSV's columns:

    <!-- table: data/NAME.csv group=N columns="model|ReLUs|protocol" -->

`python docs/hooks.py README.md` rewrites each such table from its CSV, and a test checks
that the README's tables are what their CSVs say.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"<!-- (csv|columns): (\S+)(?: group=(\d+))? -->")


def render_csv(path: Path, group: int = 0, columns: list[str] | None = None) -> str:
    """A CSV file as a markdown table (only `columns`, in that order, when given)."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path.name} has no column(s) {', '.join(missing)}; it has {', '.join(header)}")
        keep = [header.index(c) for c in columns]
        header, rows = columns, [[row[i] for i in keep] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    previous: list[str] = []
    for row in rows:
        cells = [f"{int(c):,}" if re.fullmatch(r"-?\d+", c) else c for c in row]
        shown = [("" if i < group and previous[: i + 1] == row[: i + 1] else c) for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(shown) + " |")
        previous = row
    return "\n".join(lines)


def column_docs(cls: type) -> dict[str, tuple[str, str]]:
    """Each field of a schema dataclass: (its type, its comment in the source).

    A comment on a line of its own right below a field continues that field's comment.
    """
    import inspect

    source = inspect.getsource(cls)
    docs: dict[str, tuple[str, str]] = {}
    field = None
    for line in source.splitlines():
        code, _, comment = line.partition("  # ") if "  # " in line else (line, "", "")
        match = re.match(r"\s+(\w+): ([^=]+?)(?: =|$)", code)
        if match and not code.strip().startswith(("#", '"')):
            field = match.group(1)
            docs[field] = (match.group(2).strip(), comment.strip())
        elif field and line.strip().startswith("# "):
            kind, text = docs[field]
            docs[field] = (kind, f"{text} {line.strip()[2:]}".strip())
        else:
            field = None if line.strip() else field
    return docs


def render_columns(name: str) -> str:
    """A schema class's columns as a markdown table; raises naming any column without a comment."""
    sys.path.insert(0, str(ROOT))
    import pibench.results as results

    cls = getattr(results, name)
    docs = column_docs(cls)
    undocumented = [column for column, (_, text) in docs.items() if not text]
    if undocumented:
        raise ValueError(f"pibench/results.py: {name} column(s) {', '.join(undocumented)} have no comment; "
                         "document each column where it is declared")
    kinds = {"str": "text", "int": "integer", "float": "number", "bool": "true / false"}
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for column, (kind, text) in docs.items():
        base = kind.replace(" | None", "")
        lines.append(f"| `{column}` | {kinds.get(base, base)} | {text.replace('|', '&#124;')} |")
    return "\n".join(lines)


def expand(markdown: str) -> str:
    """The page with every marker replaced by what it names."""
    def replace(match: re.Match) -> str:
        kind, target, group = match.groups()
        if kind == "columns":
            return render_columns(target)
        path = DOCS / target
        if not path.is_file():
            raise FileNotFoundError(f"{match.group(0)}: no file {path}")
        return render_csv(path, int(group or 0))

    return MARKER.sub(replace, markdown)


TABLE_VIEW = re.compile(r'(<!-- table: (\S+) group=(\d+) columns="([^"]+)" -->\n\n)((?:\|[^\n]*\n)*)')


def refresh_tables(markdown: str) -> str:
    """The page with the table under each `<!-- table: ... -->` marker made again from its CSV."""
    def replace(match: re.Match) -> str:
        marker, target, group, columns, _ = match.groups()
        return marker + render_csv(DOCS / target, int(group), columns.split("|")) + "\n"

    return TABLE_VIEW.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: object) -> str:
    return expand(markdown)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        page = Path(name)
        page.write_text(refresh_tables(page.read_text()))
