#!/usr/bin/env python3
"""Analysis speed: `reprod explain` and `report.html` over a generated history of 1,000,000 operations.

Builds a run directory whose history.sqlite has the schema of a real run (taken from a fresh
`reprod run` of a tiny scenario, so it never drifts from the code) and fills it with a million
operations on 50,000 keys, their attempts (5% retried), 300,000 dependency calls and 300,000 sink
deliveries joined by trace id, and violations on 2,000 keys, then times `reprod explain` on it
(timeline of one key + the violating-vs-clean comparison over every key), twice. Like a finished
run's history it has no indexes: the first `reprod explain` builds them, the second finds them.
Then times `reprod export html` (report.html: the plots over time streamed from every operation,
the swimlanes and the comparison) and reports the page's size.

Usage: python3 bench/analysis.py [--ops 1000000]   (needs cargo build --release --workspace)
"""

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPROD = os.path.join(ROOT, "target", "release", "reprod")

TINY = """
duration = "100ms"
drain = "0s"
[[service]]
name = "s"
url = "http://127.0.0.1:9"
[[caller]]
name = "c"
request = { path = "/" }
rate = 10
timeout = "50ms"
"""


def schema(workdir):
    path = os.path.join(workdir, "tiny.toml")
    with open(path, "w") as f:
        f.write(TINY)
    out = os.path.join(workdir, "tiny-runs")
    subprocess.run([REPROD, "run", path, "--out", out], capture_output=True)
    run = os.path.join(out, os.listdir(out)[0], "history.sqlite")
    conn = sqlite3.connect(run)
    tables = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return tables, page_size


def generate(path, tables, page_size, n_ops):
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    for sql in tables:
        conn.execute(sql)
    conn.execute("INSERT INTO run (run_id, scenario, scenario_path, seed, started_at, conditions, params, status, ended_at_us) "
                 "VALUES ('generated', 'generated', 'bench/analysis.py', 1, 'now', 'overlap', '', 'completed', 0)")
    keys = 50_000
    ops, attempts, calls, deliveries = [], [], [], []
    for op in range(1, n_ops + 1):
        key = f"acct_{min(int(rng.paretovariate(1.2)) - 1, keys - 1) if rng.random() < 0.3 else rng.randrange(keys)}"
        caller = "api" if rng.random() < 0.8 else "worker"
        start = op * 20 + rng.randrange(1000)
        trace = f"{rng.getrandbits(128):032x}"
        n = 2 if rng.random() < 0.05 else 1
        done = start + 1000 + rng.randrange(200_000)
        ops.append((op, caller, key, op, op, start, 0, start, done, "ok", n, 201, trace))
        for a in range(1, n + 1):
            attempts.append((op, a, f"00-{trace}-{rng.getrandbits(64):016x}-01", f"svc/{rng.randrange(2)}", "v1", None,
                             start, done, 201, None, '{"id": "inv"}'))
        if op % 10 < 3:
            calls.append(("usage", f"00-{trace}-{rng.getrandbits(64):016x}-01", trace, key, "GET", f"/usage/{key}/2026-01",
                          start + 50, rng.randrange(400_000), None, 200, 200, start + 400))
            deliveries.append(("email", f"00-{trace}-{rng.getrandbits(64):016x}-01", trace, key, None, done, 202, 0, "", "{}"))
        if len(ops) >= 100_000:
            flush(conn, ops, attempts, calls, deliveries)
    flush(conn, ops, attempts, calls, deliveries)
    for k in rng.sample(range(keys), 2000):
        conn.execute("INSERT INTO violations (invariant, key, detail, found_us) VALUES (?, ?, ?, ?)",
                     ("one invoice per account and period", f"acct_{k}", "invoices=2", n_ops * 20))
    conn.commit()
    # A finished run leaves its history in rollback-journal mode (History::finish).
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


def flush(conn, ops, attempts, calls, deliveries):
    conn.executemany("INSERT INTO ops VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", ops)
    conn.executemany("INSERT INTO attempts (op_id, n, traceparent, instance, version, idempotency_key, sent_us, done_us, status, error, response) VALUES (?,?,?,?,?,?,?,?,?,?,?)", attempts)
    conn.executemany("INSERT INTO dependency_calls (dependency, traceparent, trace_id, key, method, path, received_us, delay_us, fault, status, applied_status, done_us) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", calls)
    conn.executemany("INSERT INTO sink_deliveries (sink, traceparent, trace_id, key, idempotency_key, received_us, status, duplicate, headers, body) VALUES (?,?,?,?,?,?,?,?,?,?)", deliveries)
    conn.commit()
    for rows in (ops, attempts, calls, deliveries):
        rows.clear()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=1_000_000)
    args = parser.parse_args()
    if not os.path.exists(REPROD):
        sys.exit("build first: cargo build --release --workspace")
    with tempfile.TemporaryDirectory(prefix="reprod-analysis-") as work:
        tables, page_size = schema(work)
        run_dir = os.path.join(work, "generated")
        os.makedirs(run_dir)
        t = time.time()
        generate(os.path.join(run_dir, "history.sqlite"), tables, page_size, args.ops)
        print(f"generated {args.ops:,} operations in {time.time() - t:.1f} s "
              f"({os.path.getsize(os.path.join(run_dir, 'history.sqlite')) / 2**20:.0f} MiB)")
        for what in ("first, indexing", "second, indexed"):
            t = time.time()
            out = subprocess.run([REPROD, "explain", run_dir], capture_output=True, text=True)
            elapsed = time.time() - t
            if out.returncode != 0:
                sys.exit(out.stderr)
            print(f"reprod explain ({what}): {elapsed:.2f} s (exit {out.returncode})")
        print("\n" + "\n".join(out.stdout.splitlines()[-12:]))
        explained = subprocess.run([REPROD, "explain", run_dir, "--json"], capture_output=True, text=True)
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            f.write('{"run_id": "generated", "scenario": "generated", "status": "completed", '
                    '"verdict": "fail", "load_started_s": 0, "explanation": ' + explained.stdout + "}")
        t = time.time()
        out = subprocess.run([REPROD, "export", "html", run_dir], capture_output=True, text=True)
        elapsed = time.time() - t
        if out.returncode != 0:
            sys.exit(out.stderr)
        size = os.path.getsize(os.path.join(run_dir, "report.html"))
        print(f"\nreprod export html: {elapsed:.2f} s, report.html {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
