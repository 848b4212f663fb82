#!/usr/bin/env python3
"""Interleaved comparison of streamline-bench variants.

    scripts/ab.py ROUNDS 'LABEL [VAR=VALUE ...] BINARY [ARGS ...]' ... -- COMMON ARGS

Each round runs every variant once, so that a slow minute of a shared machine
hits all of them alike, in an order rotated by one each round: round 1 in the
order given, round 2 from the second variant on (the first last), and so on,
so that what a run leaves behind (page cache, freed memory, the device's
write-back) does not always fall on the same variant. The first variant given
stays the base of every comparison whatever its place in a round. Every run
gets a new directory under AB_DIR (`--dir`, removed after the run) and
`--output-format json --quiet --cleanup`; COMMON ARGS follow each variant's
own. One line per run, in the order run, then per variant the medians, and for
every variant after the first: in how many rounds it made more records/s than the
first, and the median of its round-by-round ratio to the first.

A run that fails (non-zero exit, or no JSON report) prints FAILED. It is left out
of its variant's medians, which say how many rounds failed, and counts as a lost
round: a variant wins a round when it succeeded and either made more records/s
than the first variant or the first failed; "of N rounds" is every round. The
round ratios are of the rounds both succeeded in. Any failed run makes the
script exit 1, after the summary.

Each run must be of one job (one report line): a run that prints several (several
--job, or a --job-file) stops the script at once with exit 2, since comparing one
of its jobs would silently drop the others.

Example (two builds, 64 writers, recycled files, 8 rounds):

    scripts/ab.py 8 'before ./bench-before' 'after ./bench-after' \\
        -- --backend uring --writers 64 --duration 1.5 --warmup 1 --checkpoint-ms 50

Environment: AB_DIR (where the run directories are made, on the filesystem under
test; default the current directory). Nothing else in it is touched.
"""
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

FIELDS = [
    ("rec/s", lambda r: r["records_per_sec"], "{:9.0f}"),
    ("p50us", lambda r: r["latency_us"]["p50"], "{:7.1f}"),
    ("p99us", lambda r: r["latency_us"]["p99"], "{:8.1f}"),
    ("rec/batch", lambda r: r.get("records_per_batch_mean") or 0.0, "{:5.1f}"),
    ("cpu/rec", lambda r: r.get("cpu_us_per_record") or 0.0, "{:5.2f}"),
    ("wal-cpu/rec", lambda r: r.get("wal_thread_cpu_us_per_record") or 0.0, "{:5.2f}"),
]


def parse_variant(spec):
    parts = shlex.split(spec)
    if len(parts) < 2:
        sys.exit(f"variant {spec!r}: need a label and a binary")
    label, env, cmd = parts[0], dict(os.environ), []
    for p in parts[1:]:
        if not cmd and "=" in p and not p.startswith(("/", ".")):
            key, value = p.split("=", 1)
            env[key] = value
        else:
            cmd.append(p)
    if not cmd:
        sys.exit(f"variant {spec!r}: no binary")
    return label, env, cmd


def line(label, values):
    cells = " ".join(f"{name} " + fmt.format(v) for (name, _, fmt), v in zip(FIELDS, values))
    return f"{label:12s} {cells}"


def main():
    args = sys.argv[1:]
    if len(args) < 3 or "--" not in args or not args[0].isdigit():
        sys.exit(__doc__)
    rounds = int(args[0])
    split = args.index("--")
    variants = [parse_variant(v) for v in args[1:split]]
    common = args[split + 1:]
    parent = os.environ.get("AB_DIR", ".")
    results = {label: [] for label, _, _ in variants}
    for rnd in range(rounds):
        # Rotated per round; results stay keyed by label, one entry per round.
        shift = rnd % len(variants)
        for label, env, cmd in variants[shift:] + variants[:shift]:
            scratch = tempfile.mkdtemp(prefix="ab-", dir=parent)
            try:
                run = subprocess.run(
                    cmd + ["--dir", scratch, "--output-format", "json", "--quiet", "--cleanup"]
                    + common, env=env, capture_output=True, text=True)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            values, why = None, None
            if run.returncode != 0:
                why = run.stderr.strip()[-400:]
            else:
                lines = run.stdout.strip().splitlines()
                if len(lines) > 1:
                    # One line per job: comparing only the last would drop the
                    # others without a word.
                    print(f"ab.py: {label}: the run printed {len(lines)} report lines (one per job, from "
                          "several --job or a --job-file); ab.py compares runs of one job: give each job "
                          "its own variant", file=sys.stderr)
                    sys.exit(2)
                try:
                    report = json.loads(lines[0])
                    values = [get(report) for _, get, _ in FIELDS]
                except (IndexError, ValueError, KeyError, TypeError) as e:
                    why = f"no usable JSON report ({e!r}): {run.stdout.strip()[-200:]}"
            if values is None:
                print(f"{label:12s} round {rnd + 1} FAILED: {why}", flush=True)
                results[label].append(None)
                continue
            results[label].append(values)
            print(line(label, values), flush=True)

    print(f"--- medians over {rounds} rounds")
    failed_runs = 0
    for label, _, _ in variants:
        ok = [v for v in results[label] if v is not None]
        failed = rounds - len(ok)
        failed_runs += failed
        note = f"  ({failed} of {rounds} rounds FAILED)" if failed else ""
        if ok:
            print(line(label, [statistics.median(c) for c in zip(*ok)]) + note)
        else:
            print(f"{label:12s} all {rounds} rounds FAILED")
    base_label = variants[0][0]
    base = results[base_label]
    for label, _, _ in variants[1:]:
        runs = list(zip(results[label], base))
        # A failed run loses its round; a run beats a failed first variant.
        wins = sum(v is not None and (b is None or v[0] > b[0]) for v, b in runs)
        pairs = [(v[0], b[0]) for v, b in runs if v is not None and b is not None]
        if pairs:
            ratio = f"median round ratio {statistics.median(v / b for v, b in pairs):.3f}"
            if len(pairs) < rounds:
                ratio += f" (of the {len(pairs)} rounds both succeeded in)"
        else:
            ratio = "no round in which both succeeded"
        print(f"{label} against {base_label}: more records/s in {wins} of {rounds} rounds, {ratio}")
    if failed_runs:
        print(f"ab.py: {failed_runs} of {rounds * len(variants)} runs FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
