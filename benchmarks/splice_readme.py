"""Copy ``results/robust_compression.md`` into the README between its markers.

python benchmarks/splice_readme.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- robust_compression.md:begin -->", "<!-- robust_compression.md:end -->"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    table = (ROOT / "benchmarks" / "results" / "robust_compression.md").read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
