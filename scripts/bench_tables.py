#!/usr/bin/env python3
"""Summarises scripts/bench.sh output (docs/bench-results/raw) into the tables of
docs/benchmarks.md. Every number is the median over the repetitions of one job;
every ratio ("vs nowal", "uring / std", "ratio of medians", ...) is one such
median divided by another, never a median of per-repetition ratios. The targets
table also gives the median of the per-round ratios where both sides ran in the
same streamline-bench invocation (one round: a repetition's jobs run one after
another). Each table replaces the text between `<!-- BEGIN name -->` and
`<!-- END name -->`.

usage: [CRITERION_DIR=DIR] bench_tables.py RESULTS_DIR DOC

CRITERION_DIR: criterion's output of this run (its `*/new` results fill the
criterion table); without it the table says the benches were not measured.
"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def load_jsonl(path):
    """The reports of `path`, each with `_round`: which streamline-bench invocation
    of the file it came from (job numbers restart at 1 with each invocation)."""
    out = []
    if os.path.exists(path):
        rnd, last_job = 0, None
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    j = json.loads(line)
                    job = j.get("job")
                    if last_job is None or job is None or job <= last_job:
                        rnd += 1
                    last_job = job
                    j["_round"] = (path, rnd)
                    out.append(j)
    return out


def by_round(g, k, field, sub=None):
    """{round: value} of job key `k` in group `g`."""
    out = {}
    for r in g.get(k, []):
        v = r.get(field)
        if v is not None and sub:
            v = v.get(sub)
        if v is not None:
            out[r["_round"]] = v
    return out


def pick_by_round(series, pick=max):
    """{round: pick of the values of `series` (dicts from by_round) in that round}."""
    rounds = defaultdict(list)
    for s in series:
        for rnd, v in s.items():
            rounds[rnd].append(v)
    return {rnd: pick(vs) for rnd, vs in rounds.items()}


def round_ratio(num, den, prec=2):
    """The median over the rounds both ran in of num / den (dicts from by_round)."""
    rs = [num[r] / den[r] for r in num if r in den and den[r]]
    if not rs:
        return "–"
    return f"{statistics.median(rs):.{prec}f}× ({len(rs)})"


def key(j):
    return (j["engine"], j["backend"], j["sync_mode"], j["writers"], j["queue_depth"], str(j["record_size"]))


def qd64_files(checkpoint_ms):
    if checkpoint_ms is None:
        return "new files (no checkpoint)"
    return f"recycled (checkpoint every {checkpoint_ms} ms)"


def group(jobs):
    g = defaultdict(list)
    for j in jobs:
        g[key(j)].append(j)
    return g


def med(g, k, field, sub=None):
    rows = g.get(k, [])
    vals = [(r[field].get(sub) if sub else r[field]) if r.get(field) is not None else None for r in rows]
    return median(vals)


def fmt(x, prec=0, unit=""):
    if x is None:
        return "–"
    if prec == 0:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{prec}f}{unit}"


def ratio(a, b, prec=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{prec}f}×"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def fio_summary(raw):
    res = {}
    for bs in ["4k", "64k", "1m"]:
        iops, bw, wp50, sp50 = [], [], [], []
        for p in sorted(glob.glob(f"{raw}/fio-sync-{bs}-*.json")):
            try:
                d = json.load(open(p))
            except (ValueError, OSError):
                continue
            w = d["jobs"][0]["write"]
            iops.append(w["iops"])
            bw.append(w["bw_bytes"] / 1e6)
            wp50.append(w["clat_ns"]["percentile"].get("50.000000", 0) / 1000)
            sync = d["jobs"][0].get("sync", {}).get("lat_ns", {})
            sp50.append(sync.get("percentile", {}).get("50.000000", 0) / 1000 if sync else None)
        if iops:
            res[bs] = {
                "iops": median(iops),
                "mb_s": median(bw),
                "us_per_op": 1e6 / median(iops),
                "write_p50": median(wp50),
                "sync_p50": median(sp50),
                "reps": len(iops),
            }
    for name, pattern, direction in [("qd32", "fio-bw-qd32-*.json", "write"), ("read", "fio-read-*.json", "read"),
                                     ("dsync_reserved", "fio-dsync-reserved-*.json", "write"),
                                     ("dsync_written", "fio-dsync-written-*.json", "write")]:
        mbs = []
        for p in sorted(glob.glob(f"{raw}/{pattern}")):
            try:
                d = json.load(open(p))
            except (ValueError, OSError):
                continue
            mbs.append(d["jobs"][0][direction]["bw_bytes"] / 1e6)
        if mbs:
            res[name] = {"mb_s": median(mbs), "reps": len(mbs)}
    return res


def cache_state(r):
    """How a reopen's scan found the page cache: "cold" only where the report
    shows it read at least half the WAL from the device (`cold_cache` since the
    harness measured `device_read_bytes`); "dropped-warm" where the cache was
    dropped yet the scan read less; "dropped" for reports made before the
    harness measured the reads, which say only that the drop succeeded."""
    if "device_read_bytes" not in r:
        return "dropped" if r.get("cold_cache") else "warm"
    if r.get("cold_cache"):
        return "cold"
    return "dropped-warm" if r.get("caches_dropped") else "warm"


CACHE_LABELS = {
    "cold": "dropped, read from the device",
    "dropped": "dropped (device reads not measured)",
    "dropped-warm": "dropped, yet read from the cache",
    "warm": "warm (page cache)",
}
CACHE_TARGET_LABELS = {
    "cold": "cold cache",
    "dropped": "cache dropped, device reads not measured",
    "dropped-warm": "cache dropped, yet read from the cache",
    "warm": "warm cache",
}


def main():
    results, doc = sys.argv[1], sys.argv[2]
    raw = os.path.join(results, "raw")
    blocks = {}

    machine = {}
    if os.path.exists(f"{raw}/machine.txt"):
        for line in open(f"{raw}/machine.txt"):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                machine[k] = v
    blocks["machine"] = table(["what", "value"], [[k, f"`{v}`"] for k, v in machine.items()])

    fio = fio_summary(raw)
    rows = []
    for bs, label in [("4k", "4 KiB"), ("64k", "64 KiB"), ("1m", "1 MiB")]:
        f = fio.get(bs)
        if f:
            rows.append([f"write + fdatasync, {label}, O_DIRECT, iodepth 1", fmt(f["iops"]), fmt(f["mb_s"], 1),
                         fmt(f["us_per_op"], 1), fmt(f["write_p50"], 1), fmt(f["sync_p50"], 1)])
    if "qd32" in fio:
        rows.append(["write, 1 MiB, O_DIRECT, io_uring iodepth 32, no sync", "–", fmt(fio["qd32"]["mb_s"], 1), "–", "–", "–"])
    if "read" in fio:
        rows.append(["sequential read of 1 GiB, 4 MiB, O_DIRECT, io_uring iodepth 4", "–", fmt(fio["read"]["mb_s"], 1), "–", "–", "–"])
    for key, space in [("dsync_reserved", "into reserved (never-written) space"), ("dsync_written", "into written space")]:
        if key in fio:
            rows.append([f"write, 256 KiB, O_DIRECT + O_DSYNC, io_uring iodepth 4, {space}", "–",
                         fmt(fio[key]["mb_s"], 1), "–", "–", "–"])
    blocks["fio"] = table(["fio job", "IOPS", "MB/s", "µs per op (1/IOPS)", "write p50 µs", "fdatasync p50 µs"], rows)

    # with / without WAL
    sm = group(load_jsonl(f"{raw}/syncmodes.jsonl"))
    base_k = ("nowal", "pwrite", "none", 4, 1, "1024")
    base = med(sm, base_k, "records_per_sec")
    order = [base_k] + sorted((k for k in sm if k[0] != "nowal"), key=lambda k: (k[4], k[2] != "interval", k[2], k[1]))
    rows = []
    for k in order:
        if k not in sm:
            continue
        rps = med(sm, k, "records_per_sec")
        rows.append([k[0], k[1], k[2], k[4], fmt(rps), ratio(rps, base), fmt(med(sm, k, "mb_per_sec"), 1),
                     fmt(med(sm, k, "latency_us", "p50"), 1), fmt(med(sm, k, "latency_us", "p99"), 1),
                     fmt(med(sm, k, "fsyncs_per_sec")), fmt(med(sm, k, "cpu_us_per_record"), 2), len(sm[k])])
    blocks["syncmodes"] = table(["engine", "backend", "sync", "queue depth", "rec/s", "vs nowal", "MB/s", "p50 µs",
                                 "p99 µs", "fsync/s", "CPU µs/rec", "runs"], rows)

    # scaling
    sc = group(load_jsonl(f"{raw}/scaling.jsonl"))
    engines = [("streamline", "uring"), ("streamline", "std"), ("naive", "pwrite+fdatasync"), ("okaywal", "okaywal"),
               ("raft-engine", "raft-engine")]
    present = [e for e in engines if any(k[0] == e[0] and k[1] == e[1] for k in sc)]
    names = {("streamline", "uring"): "streamline uring", ("streamline", "std"): "streamline std"}
    for size in ["128", "1024"]:
        for metric, title, sub, prec in [("records_per_sec", "rec/s", None, 0), ("latency_us", "p50 µs", "p50", 1),
                                         ("latency_us", "p99 µs", "p99", 1), ("cpu_us_per_record", "CPU µs/rec", None, 2),
                                         ("records_per_batch_mean", "rec/batch", None, 1)]:
            rows = []
            for w in [1, 4, 16, 64, 256]:
                vals = {}
                for e in present:
                    k = (e[0], e[1], "every_write", w, 1, size)
                    vals[e] = med(sc, k, metric, sub)
                row = [w] + [fmt(vals[e], prec) for e in present]
                if metric == "records_per_sec":
                    anchors = [vals.get(("okaywal", "okaywal")), vals.get(("raft-engine", "raft-engine"))]
                    anchors = [a for a in anchors if a is not None]
                    best = max(anchors) if anchors else None
                    row.append(ratio(vals.get(("streamline", "uring")), best))
                    row.append(ratio(vals.get(("streamline", "uring")), vals.get(("streamline", "std"))))
                rows.append(row)
            header = ["writers"] + [names.get(e, e[0]) for e in present]
            if metric == "records_per_sec":
                header += ["uring / best anchor", "uring / std"]
            blocks[f"scaling-{size}-{metric}-{sub or ''}".rstrip("-")] = table(header, rows)
    # where the CPU goes (streamline only)
    for size in ["128", "1024"]:
        rows = []
        for w in [1, 4, 16, 64, 256]:
            row = [w]
            for be in ["uring", "std"]:
                k = ("streamline", be, "every_write", w, 1, size)
                row += [fmt(med(sc, k, "cpu_us_per_record"), 2), fmt(med(sc, k, "wal_thread_cpu_us_per_record"), 2),
                        fmt(med(sc, k, "cpu_cores_busy"), 2), fmt(med(sc, k, "fsyncs_per_sec"))]
            rows.append(row)
        blocks[f"cpu-{size}"] = table(["writers", "uring: process µs/rec", "uring: WAL threads µs/rec", "uring: cores busy",
                                       "uring: fsync/s", "std: process µs/rec", "std: WAL threads µs/rec",
                                       "std: cores busy", "std: fsync/s"], rows)

    # 64 writers as threads (from the scaling runs) and as tasks on a tokio runtime
    # (keyed by runtime threads)
    a64 = defaultdict(list)
    for j in load_jsonl(f"{raw}/async64.jsonl"):
        a64[j.get("async_workers")].append(j)
    threads_k = ("streamline", "uring", "every_write", 64, 1, "1024")
    if threads_k in sc:
        a64[None] = sc[threads_k]
    anchor64 = max([v for v in (med(sc, (a, a, "every_write", 64, 1, "1024"), "records_per_sec")
                                for a in ["okaywal", "raft-engine"]) if v is not None], default=None)
    rows = []
    for key in sorted(a64, key=lambda w: w or 0):
        how = "64 threads, each blocked in `wait()`" if key is None else \
            f"64 tasks on {key} runtime thread{'s' if key > 1 else ''}, each `.await`ing"
        rps = med(a64, key, "records_per_sec")
        rows.append([how, fmt(rps), ratio(rps, anchor64), fmt(med(a64, key, "latency_us", "p50"), 1),
                     fmt(med(a64, key, "latency_us", "p99"), 1), fmt(med(a64, key, "cpu_us_per_record"), 2),
                     fmt(med(a64, key, "wal_thread_cpu_us_per_record"), 2),
                     fmt(med(a64, key, "cpu_cores_busy"), 2), fmt(med(a64, key, "records_per_batch_mean"), 1),
                     len(a64[key])])
    blocks["async64"] = table(["64 closed-loop writers (uring, 1 KiB, every_write)", "rec/s", "vs best anchor", "p50 µs",
                               "p99 µs", "CPU µs/rec", "WAL threads µs/rec", "cores busy", "rec/batch", "runs"], rows)

    # 64 threads with data retired as it goes: streamline checkpoints, raft-engine
    # purges, okaywal checkpoints on its own; all recycle retired files
    r64 = group(load_jsonl(f"{raw}/retire64.jsonl"))
    retire_names = {("streamline", "uring"): "streamline uring (checkpoint every 50 ms)",
                    ("streamline", "std"): "streamline std (checkpoint every 50 ms)",
                    ("raft-engine", "raft-engine"): "raft-engine (purge every 50 ms)",
                    ("okaywal", "okaywal"): "okaywal (checkpoints on its own)"}
    r64_keys = {e: (e[0], e[1], "every_write", 64, 1, "1024")
                for e in retire_names}
    retire_anchor = max([v for v in (med(r64, r64_keys[e], "records_per_sec")
                                     for e in [("raft-engine", "raft-engine"), ("okaywal", "okaywal")])
                         if v is not None], default=None)
    rows = []
    for e, name in retire_names.items():
        k = r64_keys[e]
        if k not in r64:
            continue
        rps = med(r64, k, "records_per_sec")
        rows.append([name, fmt(rps), ratio(rps, retire_anchor) if e[0] == "streamline" else "–",
                     fmt(med(r64, k, "latency_us", "p50"), 1), fmt(med(r64, k, "latency_us", "p99"), 1),
                     fmt(med(r64, k, "cpu_us_per_record"), 2), fmt(med(r64, k, "records_per_batch_mean"), 1),
                     len(r64[k])])
    blocks["retire64"] = table(["64 writer threads × 1 KiB, every_write, data retired as it goes", "rec/s",
                                "vs best anchor", "p50 µs", "p99 µs", "CPU µs/rec", "rec/batch", "runs"], rows)

    # peak RSS at 256 writers: each engine's job alone in its own process
    # (raw/rss.jsonl); a process that ran other jobs first keeps what they
    # left, so the scaling runs' own peaks grow with a job's place in them
    rs = group(load_jsonl(f"{raw}/rss.jsonl"))
    rows = []
    for e in present:
        for size in ["128", "1024"]:
            v = med(rs, (e[0], e[1], "every_write", 256, 1, size), "peak_rss_bytes")
            rows.append([names.get(e, e[0]), size, fmt(v / 2**20 if v else None, 1)])
    blocks["rss"] = table(["engine", "record size", "peak RSS MiB (VmHWM, whole process)"], rows)

    # queue depth 64
    # grouped by backend and checkpoint period: without checkpoints every file is
    # new, prepared while the WAL writes (zero-filled, or only reserved after large
    # writes as these); with them, retired files are recycled
    q = defaultdict(list)
    for j in load_jsonl(f"{raw}/qd64.jsonl"):
        q[(j["engine"], j["backend"], j.get("checkpoint_ms"))].append(j)
    fio1m = fio.get("1m", {}).get("mb_s")
    q_keys = sorted(q, key=lambda k: (k[1], k[2] or 0))  # backend, then new files first
    rows = []
    for k in q_keys:
        mbs = med(q, k, "mb_per_sec")
        rows.append([k[1], qd64_files(k[2]), fmt(med(q, k, "records_per_sec")), fmt(mbs, 1), ratio(mbs, fio1m),
                     fmt(med(q, k, "fsyncs_per_sec")), fmt(med(q, k, "records_per_batch_mean"), 1),
                     fmt(med(q, k, "latency_us", "p50"), 1), fmt(med(q, k, "latency_us", "p99"), 1),
                     fmt(med(q, k, "cpu_us_per_record"), 2), len(q[k])])
    blocks["qd64"] = table(["backend", "next file", "rec/s", "MB/s", "vs fio 1 MiB write+fdatasync", "fsync/s", "rec/batch",
                            "p50 µs", "p99 µs", "CPU µs/rec", "runs"], rows)

    # recovery
    def rss_rise(r):
        # Peak RSS during the reopen and replay over the RSS just before, MiB
        # (absent from reports made before the harness recorded it).
        if r.get("peak_rss_bytes") is None or r.get("rss_before_bytes") is None:
            return None
        return (r["peak_rss_bytes"] - r["rss_before_bytes"]) / (1 << 20)

    rec = defaultdict(list)
    for j in load_jsonl(f"{raw}/recovery.jsonl"):
        r = j.get("recovery") or {}
        rec[(j["backend"], cache_state(r))].append((j, r))
    rows = []
    fio_read = fio.get("read", {}).get("mb_s")
    for (backend, state), runs in sorted(rec.items()):
        m = lambda f: median([r.get(f) for _, r in runs])
        dropped = state in ("cold", "dropped")
        rows.append([backend, CACHE_LABELS[state], fmt(m("wal_bytes") / 1e6),
                     fmt(m("entries")), fmt(m("open_ms"), 1), fmt(m("replay_ms"), 1), fmt(m("scan_mb_per_sec")),
                     ratio(m("scan_mb_per_sec"), fio_read) if dropped else "–",
                     fmt(m("recovery_mb_per_sec")), fmt(median([j.get("mb_per_sec") for j, _ in runs]), 1),
                     fmt(median([rss_rise(r) for _, r in runs]), 1), len(runs)])
    blocks["recovery"] = table(["written with", "page cache before reopen", "WAL MB", "entries", "open ms", "replay ms",
                                "open (scan) MB/s", "scan vs fio sequential read", "open + replay MB/s",
                                "write MB/s (os_default)", "RSS rise during recovery MiB", "runs"], rows)

    # targets
    # Each row: target, measured, ratio of the medians, median of the round
    # ratios ("–" where the two sides never ran in the same invocation: fio, or a
    # fixed threshold), result.
    t = []
    anchors = ["okaywal", "raft-engine"]
    def best_anchor(w, size, field, sub=None, pick=max):
        vals = [med(sc, (a, a, "every_write", w, 1, size), field, sub) for a in anchors]
        vals = [v for v in vals if v is not None]
        return pick(vals) if vals else None
    def best_anchor_by_round(g, w, size, field, sub=None, pick=max):
        return pick_by_round([by_round(g, (a, a, "every_write", w, 1, size), field, sub) for a in anchors], pick)
    for be in ["uring", "std"]:
        k = ("streamline", be, "every_write", 64, 1, "1024")
        s64 = med(sc, k, "records_per_sec")
        a64 = best_anchor(64, "1024", "records_per_sec")
        t.append([f"64 writers × 1 KiB every_write ≥ 3× best anchor ({be})", f"{fmt(s64)} vs {fmt(a64)} rec/s",
                  ratio(s64, a64),
                  round_ratio(by_round(sc, k, "records_per_sec"), best_anchor_by_round(sc, 64, "1024", "records_per_sec")),
                  verdict(s64, a64, 3.0)])
    for be in ["uring", "std"]:
        k = ("streamline", be, "every_write", 64, 1, "1024")
        s64 = med(r64, k, "records_per_sec")
        if s64 is None:
            continue
        t.append([f"… the same with data retired as it goes, files recycled ({be})",
                  f"{fmt(s64)} vs {fmt(retire_anchor)} rec/s", ratio(s64, retire_anchor),
                  round_ratio(by_round(r64, k, "records_per_sec"), best_anchor_by_round(r64, 64, "1024", "records_per_sec")),
                  verdict(s64, retire_anchor, 3.0)])
    for be in ["uring", "std"]:
        k = ("streamline", be, "every_write", 1, 1, "1024")
        p1 = med(sc, k, "latency_us", "p50")
        a1 = best_anchor(1, "1024", "latency_us", "p50", pick=min)
        t.append([f"1 writer × 1 KiB p50 ≤ best anchor p50 ({be})", f"{fmt(p1, 1)} vs {fmt(a1, 1)} µs", ratio(p1, a1),
                  round_ratio(by_round(sc, k, "latency_us", "p50"),
                              best_anchor_by_round(sc, 1, "1024", "latency_us", "p50", pick=min)),
                  verdict(a1, p1, 1.0)])
        # fio gives the write's and the fdatasync's latencies apart, and the sum of
        # their medians is no median of the whole operation; its mean is (1/IOPS).
        # So the mean against the mean: streamline's mean latency (a report
        # without one gives "not measured", never a p50 in its place).
        mean1 = med(sc, k, "latency_us", "mean")
        f4 = fio.get("4k", {}).get("us_per_op")
        t.append([f"1 writer × 1 KiB mean ≤ 1.2× fio 4 KiB write+fdatasync mean (1/IOPS) ({be})",
                  f"{fmt(mean1, 1)} vs {fmt(f4, 1)} µs", ratio(mean1, f4), "–",
                  verdict(f4 * 1.2 if f4 else None, mean1, 1.0)])
    for k in q_keys:
        mbs = med(q, k, "mb_per_sec")
        files = "recycled" if k[2] else "new files"
        t.append([f"4 writers × qd 64 × 4 KiB ≥ 1 GB/s ({k[1]}, {files})", f"{fmt(mbs)} MB/s", ratio(mbs, 1000.0), "–",
                  verdict(mbs, 1000.0, 1.0)])
        t.append([f"… and ≥ 60% of fio 1 MiB write+fdatasync ({k[1]}, {files})", f"{fmt(mbs)} vs {fmt(fio1m)} MB/s", ratio(mbs, fio1m),
                  "–", verdict(mbs, fio1m * 0.6 if fio1m else None, 1.0)])
        # The device's own ceiling for the job's pattern (4 x 256 KiB O_DSYNC in
        # flight) into the same kind of space: context, not a target.
        same = fio.get("dsync_written" if k[2] else "dsync_reserved", {}).get("mb_s")
        if same:
            space = "written" if k[2] else "reserved"
            t.append([f"… the device's ceiling for this pattern: fio 4 × 256 KiB O_DSYNC into {space} space ({k[1]})",
                      f"{fmt(mbs)} vs {fmt(same)} MB/s", ratio(mbs, same), "–", "(context)"])
    # `nowal` runs only as a closed loop (queue depth 1): it is the like-for-like
    # ceiling of the queue-depth-1 rows only. Its median is over every nowal job,
    # those run beside the queue-depth-64 jobs included.
    nowal_k = ("nowal", "pwrite", "none", 4, 1, "1024")
    base = med(sm, nowal_k, "records_per_sec")
    base_rounds = by_round(sm, nowal_k, "records_per_sec")
    for be in ["uring", "std"]:
        for qd in [1, 64]:
            k = ("streamline", be, "interval", 4, qd, "1024")
            iv = med(sm, k, "records_per_sec")
            if iv is None:
                continue
            rr = round_ratio(by_round(sm, k, "records_per_sec"), base_rounds)
            if qd == 1:
                t.append([f"interval < 3% below nowal ({be}, queue depth 1)", f"{fmt(iv)} vs {fmt(base)} rec/s",
                          ratio(iv, base), rr, verdict(iv, base * 0.97 if base else None, 1.0)])
            else:
                t.append([f"… interval at queue depth {qd} against nowal's closed loop ({be}): not a ceiling "
                          f"comparison, nowal has no queue depth", f"{fmt(iv)} vs {fmt(base)} rec/s",
                          ratio(iv, base), rr, "(context)"])
    for (backend, state), runs in sorted(rec.items()):
        s = median([r.get("scan_mb_per_sec") for _, r in runs])
        t.append([f"recovery scan ≥ 1 GB/s (1 GiB, {CACHE_TARGET_LABELS[state]})", f"{fmt(s)} MB/s", ratio(s, 1000.0),
                  "–", verdict(s, 1000.0, 1.0)])
        if state in ("cold", "dropped") and fio_read:
            t.append(["… the device's own ceiling: fio sequential read of 1 GiB (O_DIRECT, iodepth 4)",
                      f"{fmt(s)} vs {fmt(fio_read)} MB/s", ratio(s, fio_read), "–", "(context)"])
    for size in ["128", "1024"]:
        for w in [4, 16, 64, 256]:
            ku = ("streamline", "uring", "every_write", w, 1, size)
            ks = ("streamline", "std", "every_write", w, 1, size)
            u = med(sc, ku, "records_per_sec")
            s = med(sc, ks, "records_per_sec")
            if u is not None and s is not None:
                t.append([f"uring beats std ({w} writers × {size} B)", f"{fmt(u)} vs {fmt(s)} rec/s", ratio(u, s),
                          round_ratio(by_round(sc, ku, "records_per_sec"), by_round(sc, ks, "records_per_sec")),
                          verdict(u, s, 1.0)])
    blocks["targets"] = table(["target", "measured (medians)", "ratio of medians", "median round ratio (rounds)",
                               "result"], t)

    # CRITERION_DIR is set only when this run ran the criterion benches: results
    # left in target/criterion by an earlier build are not this run's.
    crit = os.environ.get("CRITERION_DIR")
    blocks["criterion"] = "Not measured in this run."
    if crit and os.path.isdir(crit):
        rows = []
        for bj in sorted(glob.glob(f"{crit}/**/new/benchmark.json", recursive=True)):
            b = json.load(open(bj))
            est = json.load(open(os.path.join(os.path.dirname(bj), "estimates.json")))
            ns = est["median"]["point_estimate"]
            tp = b.get("throughput") or {}
            if "Bytes" in tp:
                rate = f"{tp['Bytes'] / ns:,.2f} GB/s"
            elif "Elements" in tp:
                rate = f"{tp['Elements'] / ns * 1e3:,.2f} M/s ({ns / tp['Elements']:,.1f} ns each)"
            else:
                rate = "–"
            t_s = f"{ns / 1e6:,.2f} ms" if ns >= 1e6 else f"{ns / 1e3:,.2f} µs" if ns >= 1000 else f"{ns:,.1f} ns"
            rows.append([f"`{b['full_id']}`", t_s, rate])
        if rows:
            blocks["criterion"] = table(["benchmark", "median time per iteration", "throughput"], rows)

    text = open(doc).read()
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
        if pat.search(text):
            text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
        else:
            print(f"note: docs has no block `{name}`", file=sys.stderr)
    open(doc, "w").write(text)


def verdict(value, threshold, factor):
    if value is None or threshold is None:
        return "not measured"
    return "met" if value >= threshold * factor else "**missed**"


if __name__ == "__main__":
    main()
