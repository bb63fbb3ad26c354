"""The README's generated parts, from the committed reference runs and benchmarks alone.

    python tests/update_readme.py promote --preset cpu   # copy results/<script>/ into reference/<script>/cpu/
    python tests/update_readme.py                        # redraw figures/ from reference/, rewrite the README
    python tests/update_readme.py --check --no-figures   # exit 1 if the README's text would change (a test)

    python tests/update_readme.py promote --preset cpu --replicate NAME
                                                         # ...into reference/replicates/NAME/<script>/ instead
    python tests/update_readme.py script-of fig05        # the script that draws a figure (make fig05)

reference/<script>/<preset>/ holds a run's metrics.csv.gz, meta.json, claims.json (and the
activation study's hessian.npz and gram.npz); reference/replicates/<name>/<script>/ the same runs
made again on another machine (kept beside the reference, not replacing it); reference/bench/ the
benchmark JSON. Every table and number between the README's <!-- name:start --> and
<!-- name:end --> markers is written here: the figure table (each figure's own title), the verdict
counts, the claims table (cpu and long side by side, a verdict that a replicate did not repeat
marked), the replicates' verdicts beside the reference's, the run times, the presets and constants
tables, and the benchmarks (the CPU JSON and, where one is committed, the paper-scale GPU JSON).
Nothing there is typed by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "reference"
REPLICATES = REFERENCE / "replicates"
SCRIPTS = ("exp_lr_sweep", "exp_dataset_size", "exp_activation", "exp_tandem", "exp_robustness", "exp_interventions")
PRESETS = ("cpu", "long")
RUN_FILES = ("meta.json", "claims.json", "hessian.npz", "gram.npz")
VERDICT = {"held": "**held**", "not held": "**not held**", "inconclusive": "inconclusive",
           "not testable here": "not testable"}


# ---- promote: a finished run becomes the reference ------------------------------------------------


def promote(preset: str, results: Path, scripts: tuple[str, ...] = SCRIPTS, replicate: str | None = None) -> None:
    """Copies each finished run of ``results`` into reference/<script>/<preset>/, or with
    ``replicate`` into reference/replicates/<replicate>/<script>/ (the same runs on another machine;
    a replicate holds the runs of one preset)."""
    for script in scripts:
        run = results / script
        if not (run / "meta.json").exists():
            continue
        meta = json.loads((run / "meta.json").read_text())
        if meta["preset"] != preset:
            sys.exit(f"{run} was made with --preset {meta['preset']}, not {preset}")
        if meta.get("git_dirty"):  # shown in the README's run-times table too
            print(f"warning: {run} ran with uncommitted changes to tracked files; its commit alone does not "
                  "reproduce it", file=sys.stderr)
        if replicate:  # its README line names one preset
            held = {json.loads(m.read_text())["preset"] for m in (REPLICATES / replicate).glob("exp_*/meta.json")}
            if held - {preset}:
                sys.exit(f"reference/replicates/{replicate} holds {', '.join(sorted(held))} runs, not {preset}: "
                         f"give the {preset} runs a replicate of their own (--replicate {replicate}-{preset})")
        target = REPLICATES / replicate / script if replicate else REFERENCE / script / preset
        target.mkdir(parents=True, exist_ok=True)
        with open(run / "metrics.csv", "rb") as f:
            (target / "metrics.csv.gz").write_bytes(gzip.compress(f.read(), mtime=0))
        for name in RUN_FILES:
            if (run / name).exists():
                shutil.copyfile(run / name, target / name)
        print(f"promoted {run} -> {target}")


# Floats of a recomputed claim agree with the committed ones to this relative precision, not bit for
# bit: a least-squares fit (LAPACK) or a numpy reduction sums in another order on another CPU's
# instruction set (lr_sweep.inverted_u's parabola fit, until 0c1bc73, differed in its 15th digit
# between an AVX-512 and an AVX2 machine). A changed statistic or rule moves a value far more than this.
CLAIM_FLOAT_RTOL = 1e-9


def differences(computed, committed, where: str = "") -> list[str]:
    """Where two claims.json trees differ: strings, verdicts and structure exactly, floats beyond
    CLAIM_FLOAT_RTOL."""
    if isinstance(computed, dict) and isinstance(committed, dict):
        if computed.keys() != committed.keys():
            return [f"{where}: keys {sorted(computed)} != {sorted(committed)}"]
        return [d for k in computed for d in differences(computed[k], committed[k], f"{where}.{k}")]
    if isinstance(computed, list) and isinstance(committed, list):
        if len(computed) != len(committed):
            return [f"{where}: {len(computed)} items != {len(committed)}"]
        return [d for i, (a, b) in enumerate(zip(computed, committed)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(computed, float) and isinstance(committed, (int, float)) and not isinstance(committed, bool):
        return [] if math.isclose(computed, committed, rel_tol=CLAIM_FLOAT_RTOL, abs_tol=1e-12) else \
            [f"{where}: {computed!r} != {committed!r}"]
    same = computed == committed and type(computed) is type(committed)
    return [] if same else [f"{where}: {computed!r} != {committed!r}"]


# ---- the generated sections ------------------------------------------------------------------------


def runs() -> dict[tuple[str, str], Path]:
    return {(s, p): REFERENCE / s / p for s in SCRIPTS for p in PRESETS if (REFERENCE / s / p / "meta.json").exists()}


def replicate_runs() -> dict[str, dict[str, Path]]:
    """name -> {script: run} of reference/replicates/, by preset (cpu first), then name."""
    found: dict[str, dict[str, Path]] = {}
    for meta in sorted(REPLICATES.glob("*/exp_*/meta.json")):
        found.setdefault(meta.parent.parent.name, {})[meta.parent.name] = meta.parent
    preset = lambda name: json.loads((next(iter(found[name].values())) / "meta.json").read_text())["preset"]
    return {name: found[name] for name in sorted(found, key=lambda name: (PRESETS.index(preset(name)), name))}


def claims_of(run: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads((run / "claims.json").read_text())}


def presets_of(script: str) -> dict:
    """The script's PRESETS (its module imported from the repository root)."""
    sys.path.insert(0, str(REPO))
    return __import__(script).PRESETS


def settings(script: str, config: dict) -> dict:
    """A run's settings, each setting added to the script since the run at its default: a new
    setting's default keeps what the code did before it (refactors keep results), so that is what
    the older run used."""
    fields = dataclasses.fields(type(presets_of(script)["cpu"]))
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    return json.loads(json.dumps({**defaults, **config}))  # tuples as meta.json's lists


def compare_replicate(scripts: dict[str, Path]) -> dict:
    """A replicate's claims against the reference runs of the same preset and settings: the overall
    verdicts and per-environment verdicts compared, each overall verdict that differs
    as (preset, claim id, the reference's verdict, the replicate's), and each per-environment pair
    that differs as (preset, claim id, env, the reference's evidence, the replicate's). A script whose
    reference run has other settings (a preset changed since the replicate ran) is not compared:
    ``compared`` maps the scripts that were to their reference run's meta.json, ``changed`` the
    others to the settings that differ; ``same_metrics`` lists the compared scripts whose metrics are
    the reference run's byte for byte."""
    reference_runs = runs()
    counts = {"overall": 0, "envs": 0, "overall_differ": [], "differ": [], "compared": {}, "changed": {},
              "same_metrics": []}
    for script, run in scripts.items():
        meta = json.loads((run / "meta.json").read_text())
        preset = meta["preset"]
        if (script, preset) not in reference_runs:
            continue
        reference_meta = json.loads((reference_runs[script, preset] / "meta.json").read_text())
        config, theirs = settings(script, reference_meta["config"]), settings(script, meta["config"])
        changed = sorted(k for k in {*config, *theirs} if config.get(k) != theirs.get(k))
        if changed:
            counts["changed"][script] = changed
            continue
        counts["compared"][script] = reference_meta
        if same_metrics(run, reference_runs[script, preset]):
            counts["same_metrics"].append(script)
        reference = claims_of(reference_runs[script, preset])
        for cid, claim in claims_of(run).items():
            if cid not in reference:
                continue
            counts["overall"] += 1
            if claim["verdict"] != reference[cid]["verdict"]:
                counts["overall_differ"].append((preset, cid, reference[cid]["verdict"], claim["verdict"]))
            ours = {e["env"]: e for e in reference[cid]["evidence"]}
            for e in claim["evidence"]:
                if e["env"] in ours:
                    counts["envs"] += 1
                    if e["verdict"] != ours[e["env"]]["verdict"]:
                        counts["differ"].append((preset, cid, e["env"], ours[e["env"]], e))
    return counts


def same_metrics(run: Path, other: Path) -> bool:
    """Whether two runs wrote the same metrics byte for byte. promote() compresses with mtime=0, so equal
    files are the common case; their contents are compared when the files differ (another zlib)."""
    paths = run / "metrics.csv.gz", other / "metrics.csv.gz"
    if not all(p.exists() for p in paths):  # every committed run has one (test_every_reference_run_has_its_files)
        return False
    a, b = (p.read_bytes() for p in paths)
    return a == b or gzip.decompress(a) == gzip.decompress(b)


def replicate_disagreements() -> dict[tuple[str, str, str], list[tuple[str, dict, dict]]]:
    """(preset, claim id, env) -> [(replicate, the reference's evidence, the replicate's)] where a
    replicate's per-environment verdict differs from the reference run's of the same preset."""
    found: dict[tuple[str, str, str], list[tuple[str, dict, dict]]] = {}
    for name, scripts in replicate_runs().items():
        for preset, cid, env, ours, theirs in compare_replicate(scripts)["differ"]:
            found.setdefault((preset, cid, env), []).append((name, ours, theirs))
    return found


def keep_committed_claims(path: Path, committed: bytes) -> None:
    """Puts the committed claims.json back over a recomputed one that differs from it only in float
    bits below CLAIM_FLOAT_RTOL; a changed verdict, string or value stays."""
    if not differences(json.loads(path.read_text()), json.loads(committed)):
        path.write_bytes(committed)


def redraw(figures: Path) -> None:
    """Redraws every reference run's figures (--plot-only, which also recomputes its claims.json)
    into figures/ (cpu) and figures/long/ (long): PNGs and the captions. A recomputed claims.json
    that differs from the committed one only in float bits below CLAIM_FLOAT_RTOL (another CPU's
    LAPACK) is put back, so that redrawing leaves reference/ as committed unless a claim changed.
    A PNG or table that no run draws any more (a renamed or removed figure) is deleted, with its
    caption, in figures/ and figures/long/ whether or not a run draws into them."""
    drawn: dict[Path, dict] = {figures: {}, figures / "long": {}}  # folder -> captions of the figures drawn there
    tables: dict[Path, set[str]] = {}  # folder -> the tables written there
    for (script, preset), run in runs().items():
        scratch = REPO / "build" / "figures" / script / preset
        shutil.rmtree(scratch, ignore_errors=True)
        committed = (run / "claims.json").read_bytes()
        subprocess.run([sys.executable, str(REPO / f"{script}.py"), "--plot-only", "--out", str(run), "--figures",
                        str(scratch)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        keep_committed_claims(run / "claims.json", committed)
        target = figures if preset == "cpu" else figures / preset
        target.mkdir(parents=True, exist_ok=True)
        for png in scratch.glob("*.png"):
            shutil.copyfile(png, target / png.name)
        for table in scratch.glob("table*.md"):
            shutil.copyfile(table, target / table.name)
            tables.setdefault(target, set()).add(table.name)
        titles = json.loads((scratch / "captions.json").read_text())
        drawn.setdefault(target, {}).update({name: {"title": t, "script": script} for name, t in titles.items()})
    for target, captions in drawn.items():
        if not target.exists():
            continue
        for png in target.glob("*.png"):
            if png.stem not in captions:
                png.unlink()
        for table in target.glob("table*.md"):
            if table.name not in tables.get(target, set()):
                table.unlink()
        (target / "captions.json").write_text(json.dumps(dict(sorted(captions.items())), indent=1) + "\n")


def figure_table(figures: Path) -> str:
    captions = json.loads((figures / "captions.json").read_text()) if (figures / "captions.json").exists() else {}
    lines = ["| figure | what it shows (its own title) | script | image |", "|---|---|---|---|"]
    for script in SCRIPTS:
        for name, c in captions.items():
            if c["script"] == script:
                long = figures / "long" / f"{name}.png"
                image = f"[cpu](figures/{name}.png)" + (f", [long](figures/long/{name}.png)" if long.exists() else "")
                title = " ".join(c["title"].split()).replace("|", "/")  # a title's line breaks would end the row
                lines.append(f"| `{name}` | {title} | `{script}.py` | {image} |")
    return "\n".join(lines)


def evidence_line(e: dict) -> str:
    """One environment's statistic, interval, p, seeds and verdict, with the evidence's note (which
    says, for one, why a verdict is not what the interval alone would give: too few seeds)."""
    if e["verdict"] == "not testable here":
        return f"not testable ({e['note']})"
    value = f"{e['value']:.3g}" if e["value"] is not None else "nan"
    interval = f" [{e['low']:.3g}, {e['high']:.3g}]" if e["low"] is not None else ""
    p = f", p = {e['p']:.2g}" if e["p"] is not None else ""
    n = f", n = {e['n']}" if e.get("n") is not None else ""
    note = f"; {e['note']}" if e.get("note") else ""
    return f"{value}{interval}{p}{n} ({e['verdict']}{note})"


REPEATED_NOT = "†"  # marks a verdict that a replicate on another machine did not repeat


def evidence_text(claim: dict, not_repeated: set[str] = frozenset()) -> str:
    mark = lambda env: f" {REPEATED_NOT}" if env in not_repeated else ""
    return "<br>".join(f"{e['env'].split('/')[-1]}: {evidence_line(e)}{mark(e['env'])}" for e in claim["evidence"])


def not_run(script: str, preset: str) -> str:
    """Why a claim has no verdict at a preset: its sub-study is not part of that preset, or the
    reference run narrowed the preset's sub-studies (``--studies``), or the preset was not run here
    (the MinAtar and Atari studies' `long` presets are meant for a GPU)."""
    cfg = presets_of(script)[preset]
    families = {env.split("/")[0] for env in getattr(cfg, "env", ())}
    where = "meant for a GPU" if families & {"minatar", "atari"} else "no reference run yet"
    meta = REFERENCE / script / preset / "meta.json"
    if not meta.exists():
        return f"not run: `{preset}` of {', '.join(sorted(families))} ({where})"
    ran = json.loads(meta.read_text())["config"].get("studies", ())
    if set(ran) != set(getattr(cfg, "studies", ())):
        return f"not run: the `{preset}` reference run has only the {', '.join(ran)} sub-study (the rest: {where})"
    return f"not run: the sub-study is not part of the `{preset}` preset"


def claims_table() -> str:
    claims, script_of = {}, {}  # id -> {preset: claim}; id -> script
    for (script, preset), run in runs().items():
        for c in json.loads((run / "claims.json").read_text()):
            claims.setdefault(c["id"], {})[preset] = c
            script_of[c["id"]] = script
    lines = ["| claim | the paper | statistic and rule | cpu | long |", "|---|---|---|---|---|"]
    differ = replicate_disagreements()
    for cid, by_preset in claims.items():
        c = next(iter(by_preset.values()))
        cells = []
        for preset in PRESETS:
            if preset in by_preset:
                p = by_preset[preset]
                not_repeated = {env for (at, claim_id, env) in differ if at == preset and claim_id == cid}
                cells.append(f"{VERDICT[p['verdict']]}: {p['summary']}<br>{evidence_text(p, not_repeated)}")
            else:
                cells.append(not_run(script_of[cid], preset))
        rule = f"{c['statistic']}; {c['rule']}"
        lines.append("| " + " | ".join(x.replace("|", "/") for x in [f"`{cid}`", c["paper"], rule, *cells]) + " |")
    return "\n".join(lines)


def verdict_counts() -> str:
    lines = ["| preset | held | not held | inconclusive | not testable | claims |", "|---|---|---|---|---|---|"]
    for preset in PRESETS:
        verdicts = [c["verdict"] for (s, p), run in runs().items() if p == preset
                    for c in json.loads((run / "claims.json").read_text())]
        if verdicts:
            count = lambda v: sum(x == v for x in verdicts)
            lines.append(f"| `{preset}` | {count('held')} | {count('not held')} | {count('inconclusive')} | "
                         f"{count('not testable here')} | {len(verdicts)} |")
    return "\n".join(lines)


def earlier_seconds(meta: dict) -> float | None:
    """What the trainings a run resumed from checkpoints had taken in earlier runs (0 for a run that
    resumed none), or None where a checkpoint predates recording it: a resumed run's wall_seconds
    timed only its own process."""
    before = [meta.get("resumed_seconds", {}).get(name) for name in meta.get("resumed", {})]
    return None if None in before else sum(before)


def times_table() -> str:
    lines = ["| script | preset | wall time | evaluation share | where the time went (seconds) | machine | commit |",
             "|---|---|---|---|---|---|---|"]
    total, earlier, partial, machines = {}, {}, set(), {}
    for preset in PRESETS:
        for script in SCRIPTS:
            run = REFERENCE / script / preset
            if not (run / "meta.json").exists():
                continue
            meta = json.loads((run / "meta.json").read_text())
            spent = meta.get("seconds", {})
            # What no phase timed (network initialisation, tracing outside the trainer, analysis inside
            # run() such as activation's Hessian): the wall time less the phases, so the row adds up.
            untimed = {"untimed": meta["wall_seconds"] - sum(spent.values())} if spent else {}
            seconds = ", ".join(f"{k} {v:.0f}" for k, v in sorted({**spent, **untimed}.items(), key=lambda kv: -kv[1])
                                if v >= 0.5)
            total[preset] = total.get(preset, 0.0) + meta["wall_seconds"]
            machines.setdefault(preset, set()).add(meta.get("machine", ""))
            share = f"{spent.get('evaluate', 0.0) / meta['wall_seconds']:.1%}"
            # A run that resumed trainings from checkpoints timed only its own process; the checkpoints
            # record what their trainings took before (not those written before they recorded it).
            resumed, before = meta.get("resumed", {}), earlier_seconds(meta)
            wall = f"{meta['wall_seconds'] / 60:.1f} min"
            if resumed:
                trainings = f"{len(resumed)} training{'s' if len(resumed) > 1 else ''}"
                if before is None:
                    wall += f" (resumed {trainings} from an earlier run)"
                    partial.add(preset)
                else:
                    wall += f" (resumed {trainings}, which had taken {before / 60:.1f} min in earlier runs)"
                    earlier[preset] = earlier.get(preset, 0.0) + before
            commit = f"`{meta.get('git_commit', '')[:7]}`" + (" + uncommitted changes" if meta.get("git_dirty") else "")
            lines.append(f"| `{script}` | `{preset}` | {wall} | {share} | {seconds} | "
                         f"{meta.get('machine', '')}, {meta['num_devices']} x {meta['device']} | {commit} |")
    for preset, seconds in total.items():
        more = f" + {earlier[preset] / 60:.1f} min of resumed trainings in earlier runs" if preset in earlier else ""
        more += " + the earlier runs' time" if preset in partial else ""
        if len(machines[preset]) > 1:  # run times are comparable only on one CPU model
            more += f" (a sum over {len(machines[preset])} machines: not one machine's time)"
        lines.append(f"| all | `{preset}` | {seconds / 60:.1f} min{more} | | | | |")
    return "\n".join(lines)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def the(n: int, noun: str) -> str:
    """A sentence's start: 'The noun' for one, 'The n nouns' for several."""
    return f"The {noun}" if n == 1 else f"The {n} {noun}s"


def replicates_table() -> str:
    """Per replicate: its machine, commit and time beside the reference's, how many verdicts it
    repeated, and each overall and per-environment verdict it did not."""
    replicates = replicate_runs()
    if not replicates:
        return "(no replicate yet: `make replicate NAME=<machine>` on another machine)"
    lines = []
    for name, scripts in replicates.items():
        metas = {s: json.loads((run / "meta.json").read_text()) for s, run in scripts.items()}
        preset = next(iter(metas.values()))["preset"]
        counts = compare_replicate(scripts)
        compared = {s: metas[s] for s in counts["compared"]}
        machines = sorted({m.get("machine", "") for m in metas.values()})
        commits = sorted({m.get("git_commit", "")[:7] for m in metas.values()})
        changed = "".join(f" `{s}` is not compared: its reference run has other settings ({', '.join(keys)})."
                          for s, keys in counts["changed"].items())
        plural = "s" if len(commits) > 1 else ""
        same = counts["same_metrics"]
        if not compared:
            identical = ""
        elif len(compared) == 1:
            identical = (f"The metrics of {code_list(compared)} are {'' if same else 'not '}the reference's byte "
                         "for byte. ")
        elif same:
            identical = (f"The metrics of {len(same)} of the compared scripts ({code_list(same)}) are the reference's "
                         "byte for byte. ")
        else:
            identical = "None of the compared scripts' metrics are the reference's byte for byte. "
        lines += [f"`{name}` (`{preset}`, {count(len(scripts), 'script')}): {'; '.join(machines)}, "
                  f"commit{plural} {code_list(commits)}.{changed} "
                  f"{replicate_times(compared, counts['compared'])}"
                  f"{identical}It repeated {counts['overall'] - len(counts['overall_differ'])} of {counts['overall']} "
                  f"overall verdicts and {counts['envs'] - len(counts['differ'])} of {counts['envs']} "
                  "per-environment verdicts."
                  + overall_moves(counts["overall_differ"], name)
                  + (f" {the(len(counts['differ']), 'per-environment verdict')} it did not repeat:"
                     if counts["differ"] else ""), ""]
        if counts["differ"]:
            lines += [f"| claim | environment | reference (`{preset}`) | `{name}` |", "|---|---|---|---|"]
            for _, cid, env, ours, theirs in sorted(counts["differ"], key=lambda d: d[:3]):
                lines.append(f"| `{cid}` | {env.split('/')[-1]} | {evidence_line(ours)} | "
                             f"{evidence_line(theirs)} |")
            lines.append("")
    return "\n".join(lines).rstrip()


def whole_seconds(meta: dict) -> float | None:
    """A run's wall time with what its resumed trainings had taken in earlier runs; None where that
    was not recorded (the run timed only its own part)."""
    before = earlier_seconds(meta)
    return None if before is None else meta["wall_seconds"] + before


def code_list(names: Iterable[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def replicate_times(metas: dict[str, dict], reference: dict[str, dict]) -> str:
    """The sentence that sets a replicate's run times beside the reference runs', over the compared
    scripts timed whole on both sides: a run that resumed trainings whose earlier time its checkpoints
    did not record timed only its own part, so the sums would compare parts with wholes."""
    timed = [s for s in reference if whole_seconds(metas[s]) is not None and whole_seconds(reference[s]) is not None]
    left_out = [s for s in reference if s not in timed]
    machines = sorted({reference[s].get("machine", "") for s in timed})
    sentence = ""
    if timed:
        which = f" timed whole ({code_list(timed)})" if left_out else ""
        sentence = (f"{the(len(timed), 'compared script')}{which} took "
                    f"{sum(whole_seconds(metas[s]) for s in timed) / 60:.1f} min, "
                    f"{'its reference run' if len(timed) == 1 else 'their reference runs'} "
                    f"{sum(whole_seconds(reference[s]) for s in timed) / 60:.1f} min on {'; '.join(machines)}. ")
    if left_out:
        side = lambda s: " and ".join(run for run, meta in (("its run in this replicate", metas[s]),
                                                             ("its reference run", reference[s]))
                                      if whole_seconds(meta) is None)
        sentence += ("Not timed whole, so left out of the times: "
                     + ", ".join(f"`{s}` ({side(s)} resumed trainings whose earlier time was not recorded)"
                                 for s in left_out) + ". ")
    return sentence


def overall_moves(differ: list[tuple[str, str, str, str]], name: str) -> str:
    """The overall verdicts a replicate did not repeat, as a sentence ("" when it repeated them all)."""
    if not differ:
        return ""
    plain = lambda verdict: VERDICT[verdict].strip("*")  # the claims table's words, without the bold
    moves = "; ".join(f"`{cid}` {plain(ours)} in the reference, {plain(theirs)} in `{name}`"
                      for _, cid, ours, theirs in sorted(differ))
    return f" {the(len(differ), 'overall verdict')} it did not repeat: {moves}."


def bench_table(path: Path, how: str = "run `make bench`") -> str:
    if not path.exists():
        return f"(no {path.relative_to(REPO)} yet: {how})"
    bench = json.loads(path.read_text())
    lines = [f"Measured on {bench['device']}, {bench['machine']} (float32 matmul peak "
             f"{bench['matmul_peak_flops'] / 1e9:.0f} GFLOP/s, measured in the same run).", "",
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


# The thresholds the claims decide with, read from the source (name, value and the comment that
# says why), so the README cannot drift from the code.
DECISION_CONSTANTS = {
    "common.py": ("ALPHA", "MIN_INTERVAL_SEEDS", "STRONG_CORRELATION", "FINAL_FRACTION", "DORMANT_TAU",
                  "EARLY_STEPS", "EARLY_DROP", "RISE_FACTOR, RISE_UNITS", "LATE_DROP"),
    "exp_lr_sweep.py": ("DEAD_ONSET, COLLAPSE_ONSET", "UNITS_BOUND", "BATCH_MARGIN"),
    "exp_dataset_size.py": ("TAU_AGREE", "QUALITY_GOOD"),
    "exp_interventions.py": ("SIMPSON_MIN", "SAM_MARGIN"),
}


def constants_table() -> str:
    lines = ["| where | constant | value | meaning |", "|---|---|---|---|"]
    for file, names in DECISION_CONSTANTS.items():
        source = (REPO / file).read_text().splitlines()
        for name in names:
            line = next((x for x in source if x.startswith(f"{name} = ")), None)
            if line is None:
                sys.exit(f"{file} has no constant {name} (update DECISION_CONSTANTS)")
            value, _, why = line[len(name) + 3:].partition("  # ")
            lines.append(f"| `{file}` | `{name}` | `{value.strip()}` | {why.strip().replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def presets_table() -> str:
    """Each script's `cpu` and `long` presets, one row per sub-study (the script's ``parts``):
    environments, seeds, training length, what its runs differ in, and whether the committed
    reference run of that preset has it."""
    lines = ["| script | preset | sub-study | environments | seeds | length | its runs differ in | in `reference/` |",
             "|---|---|---|---|---|---|---|---|"]
    for script in SCRIPTS:
        presets_of(script)  # imports the script, and common beside it
        study, C = sys.modules[script].STUDY, sys.modules["common"]
        for preset in PRESETS:
            cfg = study.presets[preset]
            if study.parts is not None:
                parts = study.parts(cfg)
            elif hasattr(cfg, "num_env_steps"):
                parts = [C.Part("all", cfg.env, cfg.seeds, cfg.num_env_steps, "", "env steps")]
            else:
                parts = [C.Part("all", cfg.env, cfg.seeds, cfg.num_steps, "")]
            meta = REFERENCE / script / preset / "meta.json"
            ran = json.loads(meta.read_text())["config"].get("studies") if meta.exists() else ()
            for part in parts:
                kept = "yes" if ran is None or part.name in ran else "no"
                lines.append(f"| `{script}` | `{preset}` | {part.name} | {', '.join(part.envs)} | {part.seeds} | "
                             f"{part.steps:,} {part.unit} | {part.varies or '-'} | {kept} |")
    return "\n".join(lines)


def replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        sys.exit(f"README.md lacks the {start} ... {end} markers")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def generate(text: str, figures: Path) -> str:
    text = replace(text, "figures", figure_table(figures))
    text = replace(text, "verdicts", verdict_counts())
    text = replace(text, "claims", claims_table())
    text = replace(text, "replicates", replicates_table())
    text = replace(text, "times", times_table())
    text = replace(text, "presets", presets_table())
    text = replace(text, "constants", constants_table())
    text = replace(text, "bench", bench_table(REFERENCE / "bench" / "bench.json"))
    return replace(text, "bench-paper", bench_table(REFERENCE / "bench" / "bench_paper.json",
                                                 "no GPU has been lent to a session that made this reference"))


def script_of_figure(figure: str | None) -> str:
    """The script that draws a figure, named in full or by its number (``fig05``), as
    figures/captions.json records it: what ``make fig05`` runs."""
    captions = json.loads((REPO / "figures" / "captions.json").read_text())
    scripts = {c["script"] for name, c in captions.items() if name == figure or name.split("_")[0] == figure}
    if len(scripts) != 1:
        sys.exit(f"error: no figure {figure!r}; the figures are {', '.join(name.split('_')[0] for name in captions)}")
    return scripts.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("readme", "promote", "script-of"), default="readme")
    parser.add_argument("figure", nargs="?", help="script-of: a figure, e.g. fig05: print the script that draws it")
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="promote: the preset the runs were made with")
    parser.add_argument("--results", type=Path, default=REPO / "results", help="promote: where the runs are")
    parser.add_argument("--script", action="append", choices=SCRIPTS, help="promote: only this script (repeatable)")
    parser.add_argument("--replicate", metavar="NAME", help="promote: into reference/replicates/NAME/, beside the "
                        "reference runs (the same runs made on another machine) instead of replacing them")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README would change; write nothing")
    parser.add_argument("--no-figures", action="store_true", help="do not redraw figures/ (the text only)")
    args = parser.parse_args()
    if args.command == "promote":
        promote(args.preset, args.results, tuple(args.script or SCRIPTS), args.replicate)
        return
    if args.command == "script-of":
        print(script_of_figure(args.figure))
        return
    figures = REPO / "figures"
    if not args.no_figures and not args.check:
        redraw(figures)
    readme = REPO / "README.md"
    text = readme.read_text()
    new = generate(text, figures)
    if args.check:
        if new != text:
            sys.exit("README.md is not what reference/ generates: run `make readme`")
        print("README.md is what reference/ generates")
        return
    readme.write_text(new)
    print("README.md regenerated from reference/")


if __name__ == "__main__":
    main()
