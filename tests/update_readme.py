"""Rewrites README.md's claims table from results/*/claims.json (run by `make figures`), so the
table always shows what the last run measured."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- claims:start -->", "<!-- claims:end -->"


def table(results: Path) -> str:
    lines = ["| id | paper claim | statistic | value | held |", "|---|---|---|---|---|"]
    for path in sorted(results.glob("exp_*/claims.json")):
        for c in json.loads(path.read_text()):
            held = {True: "yes", False: "**no**", None: "n/a"}[c["held"]]
            cells = [c["id"], c["claim"], c["statistic"], str(c["value"]), held]
            lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md lacks the {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table(REPO / 'results')}\n{END}{tail}")
    print("README.md claims table updated")


if __name__ == "__main__":
    main()
