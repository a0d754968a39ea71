"""Copy each ``results/NAME.md`` into the README between its markers
(``<!-- NAME.md:begin -->`` ... ``<!-- NAME.md:end -->``), for every NAME the README marks.

python benchmarks/splice_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    for name in re.findall(r"<!-- (\w+)\.md:begin -->", text):
        begin, end = f"<!-- {name}.md:begin -->", f"<!-- {name}.md:end -->"
        source = ROOT / "benchmarks" / "results" / f"{name}.md"
        if not source.exists():  # a benchmark not run yet: its placeholder stays
            continue
        table = source.read_text(encoding="utf-8")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{table}{end}{tail}"
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
