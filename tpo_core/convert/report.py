"""The conversion table as Markdown, generated from ``table.conversion_table`` (docs/convert.md embeds it).

``python -m tpo_core.convert.report`` rewrites the part of docs/convert.md between ``<!-- table:begin -->``
and ``<!-- table:end -->``; ``tests/test_convert_layout.py`` fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .table import conversion_table

BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "convert.md"


def table_markdown() -> str:
    """Renames (per group, in matching order; LoRA-merged rules apart) and extras with their reasons."""
    lines = ["Placeholders: `{n}`/`{k}` an integer, `{p}` `weight` or `bias`, `{rest}` any suffix. The first "
             "matching rule wins.", ""]
    merged = {r.source for r in conversion_table(True)} - {r.source for r in conversion_table(False)}
    group = None
    rows = [r for r in conversion_table(False) if r.targets] + [r for r in conversion_table(True)
                                                                if r.source in merged]
    for rule in rows:
        g = rule.group + (" (`--merge-lora`)" if rule.source in merged else "")
        if g != group:
            lines += ["", f"**{g}**", "", "| official | tpo-edge | transform |", "|---|---|---|"]
            group = g
        transform = rule.transform + (f" (`{rule.role}`)" if rule.role else "")
        lines.append(f"| `{rule.source}` | {'<br>'.join(f'`{t}`' for t in rule.targets)} | {transform} |")
    lines += ["", "**Extras** (kept verbatim in `extras.safetensors`)", "", "| official | reason |", "|---|---|"]
    lines += [f"| `{r.source}` | {r.reason} |" for r in conversion_table(False) if not r.targets]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def splice(doc: str, body: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"the document lacks the markers {BEGIN} / {END}")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    path = Path(argv[0]) if argv else DOC
    path.write_text(splice(path.read_text(), table_markdown()))
    print(f"updated the conversion table in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
