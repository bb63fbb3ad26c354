"""Rewrites README.md's generated tables, so they always show what the last run measured:
`--claims` from results/*/claims.json (run by `make figures`), `--bench` from
results/bench/bench.json (run by `make bench`)."""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def claims_table(results: Path) -> str:
    lines = ["| id | paper claim | statistic | value | held |", "|---|---|---|---|---|"]
    for path in sorted(results.glob("exp_*/claims.json")):
        for c in json.loads(path.read_text()):
            held = {True: "yes", False: "**no**", None: "n/a"}[c["held"]]
            cells = [c["id"], c["claim"], c["statistic"], str(c["value"]), held]
            lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    return "\n".join(lines)


def bench_table(path: Path) -> str:
    bench = json.loads(path.read_text())
    machine = bench.get("machine", "the project's 2-core x86_64 CPU machine")
    lines = [f"Measured by `make bench` on {bench['device']}, {machine} (float32 matmul peak "
             f"{bench['matmul_peak_flops'] / 1e9:.0f} GFLOP/s measured in the same run).", "",
             "| row | steps/s | MFLOP/step | roofline | notes |", "|---|---|---|---|---|"]
    for r in bench["rows"]:
        notes = ", ".join(f"{k} = {v}" for k, v in r.items()
                          if k not in ("name", "steps_per_s", "flops_per_step", "roofline_fraction"))
        if "steps_per_s" in r:
            rate = f"{r['steps_per_s']:,.0f}" if r["steps_per_s"] >= 100 else f"{r['steps_per_s']:.3g}"
            lines.append(f"| `{r['name']}` | {rate} | {r['flops_per_step'] / 1e6:,.2f} | "
                         f"{(r['roofline_fraction'] or 0):.1%} | {notes} |")
        else:
            lines.append(f"| `{r['name']}` | | | | {notes} |")
    return "\n".join(lines)


def replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        sys.exit(f"README.md lacks the {start} ... {end} markers")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--claims", action="store_true", help="rewrite the claims table")
    parser.add_argument("--bench", action="store_true", help="rewrite the benchmark table")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()
    if args.claims:
        text = replace(text, "claims", claims_table(REPO / "results"))
    if args.bench:
        text = replace(text, "bench", bench_table(REPO / "results" / "bench" / "bench.json"))
    readme.write_text(text)
    print("README.md tables updated")


if __name__ == "__main__":
    main()
