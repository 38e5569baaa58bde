#!/usr/bin/env python3
"""What reading the services' telemetry costs reprod: log lines (`logs = {...}`) and OTLP spans.

One Python service (stdlib only, plus `opentelemetry-proto` for the OTLP mode) answers a light
load while a thread of its own emits telemetry at a fixed rate for the whole run:

  logs  10,000 JSON lines per second on stderr, each with a trace id and a key
  otlp  10,000 spans per second, posted as OTLP/HTTP protobuf batches of 100 to {otlp.url}

reprod runs the same scenario (the release build) with the lines read into the history and with
them only written to the log file (`logs` off), and with the OTLP receiver taking the spans. For
each it reports reprod's own CPU seconds (user + system, from wait4) and peak RSS, and what the
history holds. Two logs-on durations show whether memory stays flat as lines accumulate.

Usage: python3 bench/telemetry.py [--seconds 10]   (needs cargo build --release -p reprod)
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPROD = os.path.join(ROOT, "target", "release", "reprod")

SERVICE = r'''
import http.client, http.server, json, os, random, signal, sys, threading, time, urllib.parse
MODE, PORT, RATE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sent = [0, 0]

def logs():
    lines = [json.dumps({"ts_ms": 0, "level": "info", "trace_id": "%032x" % random.getrandbits(128),
                         "account_id": "acct_%d" % (i % 200), "msg": "decision %d" % i,
                         "db_wait_ms": i % 7}) + "\n" for i in range(1000)]
    start, n = time.time(), 0
    while True:
        due = int((time.time() - start) * RATE)
        if due > n:
            k = min(due - n, 1000)
            sys.stderr.write("".join(lines[:k]))
            sys.stderr.flush()
            n += k
        time.sleep(0.005)

def otlp():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    url = urllib.parse.urlparse(os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/traces")
    conn = http.client.HTTPConnection(url.hostname, url.port)
    start, n = time.time(), 0
    while True:
        due = int((time.time() - start) * RATE)
        while due - n >= 100:
            req = ExportTraceServiceRequest()
            spans = req.resource_spans.add().scope_spans.add()
            now = time.time_ns()
            for i in range(100):
                s = spans.spans.add()
                s.trace_id = random.getrandbits(128).to_bytes(16, "big")
                s.span_id = random.getrandbits(64).to_bytes(8, "big")
                s.name = "SELECT invoices"
                s.kind = 3
                s.start_time_unix_nano = now
                s.end_time_unix_nano = now + 1000000
                a = s.attributes.add()
                a.key = "db.query.text"
                a.value.string_value = "SELECT * FROM invoices WHERE account_id = $1"
            conn.request("POST", url.path, req.SerializeToString(),
                         {"content-type": "application/x-protobuf"})
            r = conn.getresponse()
            r.read()
            sent[0] += 100
            sent[1] += 100 if r.status == 200 else 0
            n += 100
        time.sleep(0.005)

def stop(*_):
    if MODE == "otlp":
        sys.stdout.write("sent %d accepted %d\n" % (sent[0], sent[1]))
        sys.stdout.flush()
    os._exit(0)
signal.signal(signal.SIGTERM, stop)

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H)
threading.Thread(target={"logs": logs, "otlp": otlp, "quiet": lambda: None}[MODE], daemon=True).start()
server.serve_forever()
'''

SCENARIO = """
duration = "{seconds}s"
drain = "0s"
[[service]]
name = "s"
command = ["python3", "-u", "service.py", "{mode}", "{{port}}", "{rate}"]
cwd = "."
ready = {{ path = "/", timeout = "20s" }}
{extra}
[[caller]]
name = "c"
request = {{ path = "/" }}
rate = 100
"""


def run(work, name, mode, seconds, rate, extra):
    path = os.path.join(work, name + ".toml")
    with open(path, "w") as f:
        f.write(SCENARIO.format(seconds=seconds, mode=mode, rate=rate, extra=extra))
    out = os.path.join(work, name)
    proc = subprocess.Popen(
        [REPROD, "run", path, "--out", out, "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    summary = json.loads(stdout)
    run_dir = summary["run_dir"]
    db = sqlite3.connect(os.path.join(run_dir, "history.sqlite"))
    logs = db.execute("SELECT COUNT(*) FROM service_logs").fetchone()[0]
    spans = db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    accepted = ""
    log = os.path.join(run_dir, "services", "s-0.log")
    for line in open(log, errors="replace"):
        if line.startswith("sent "):
            accepted = line.strip()
    return {
        "name": name,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "verdict": summary["verdict"],
        "ops": summary["ops"]["total"],
        "service_logs": logs,
        "spans": spans,
        "logs_counts": summary.get("service_logs"),
        "otlp": summary.get("otlp"),
        "service": accepted,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=10000)
    args = parser.parse_args()
    if not os.path.exists(REPROD):
        sys.exit("build first: cargo build --release -p reprod")
    logs = 'logs = { format = "json", trace = "trace_id", time = "ts_ms", key = "account_id" }'
    otlp = 'env = { OTEL_EXPORTER_OTLP_ENDPOINT = "{otlp.url}" }'
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "service.py"), "w") as f:
            f.write(SERVICE)
        s, r = args.seconds, args.rate
        results = [
            run(work, "logs_off", "logs", s, r, ""),
            run(work, "logs_on", "logs", s, r, logs),
            run(work, "logs_on_2x", "logs", 2 * s, r, logs),
            run(work, "otlp", "otlp", s, r, otlp),
        ]
    print(f"{r} lines or spans per second, {s} s of load (logs_on_2x: {2 * s} s)\n")
    print(f"{'run':<12} {'reprod CPU s':>12} {'peak RSS MiB':>13} {'service_logs':>13} {'spans':>8}  notes")
    for x in results:
        notes = x["service"] or (json.dumps(x["logs_counts"]) if x["logs_counts"] else "")
        if x["otlp"]:
            notes = f"{notes} receiver: {json.dumps(x['otlp'])}"
        print(
            f"{x['name']:<12} {x['cpu_s']:>12.2f} {x['rss_mib']:>13.1f} {x['service_logs']:>13} {x['spans']:>8}  {notes}"
        )
    off, on = results[0]["cpu_s"], results[1]["cpu_s"]
    print(f"\nlogs on vs off: {100 * (on - off) / off:+.1f}% reprod CPU")


if __name__ == "__main__":
    main()
