#!/usr/bin/env python3
"""Continuous backup under a steady write load (docs/BENCHMARKS.md, "Continuous backup").

Writes events into Monoskope's `event_records` at a fixed rate the way its EventStore stores
them (one INSERT per event, each its own transaction) and, with --bus, publishes each to
RabbitMQ after the insert as the EventStore does; `backup-server serve --continuous` (release
build) follows the table and writes segments to the S3 server on loopback. After the run it
measures, for every event, the time from its commit to the completion of the segment that holds
it (read from the segments' manifests), and the service's CPU seconds, peak RSS and the
requests it sent to S3 (counted by a counting proxy in front of moto).

    python3 bench/continuous.py --rate 200 --seconds 120 --interval 5s [--bus] [--out FILE]

Two more measurements:

    python3 bench/continuous.py --idle-events 1000000 --seconds 300
        the idle cost: a store of that many events, its first (full) backup done, then no writes:
        the service's CPU, its S3 requests and the rows it read from the events table, per hour;
    python3 bench/continuous.py --rate 1000 --seconds 240 --interval 1s --compact 10s
        compaction: segments compacted every 10 s stand for a day's hourly compactions (24 in
        240 s); then `restore latest` of that chain against a restore of one full backup of the
        same events (best of three each), and the archives each reads.

Needs the services of .ci/test (PostgreSQL, moto S3, RabbitMQ: `bash bench/continuous`
starts them) and psycopg 3 (`pip install "psycopg[binary]"`).
"""

import argparse
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target/release/backup-server")
# AWS S3 Standard, us-east-1, as published (per 1,000 requests).
PUT_PER_1000 = 0.005
GET_PER_1000 = 0.0004


class Counter:
    """Counts the requests a forwarding HTTP proxy passes to moto, by method."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_method = {}

    def add(self, method):
        with self.lock:
            self.by_method[method] = self.by_method.get(method, 0) + 1


def start_counting_proxy(target, counter):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def forward(self):
            counter.add(self.command)
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            req = urllib.request.Request(target + self.path, data=body, method=self.command)
            # Every header as it came, Host too: a server that checks SigV4 (versitygw) checks
            # the signature over the Host the client signed.
            for k, v in self.headers.items():
                if k.lower() not in ("content-length", "connection"):
                    req.add_header(k, v)
            try:
                resp = urllib.request.urlopen(req, timeout=60)
                status, headers, data = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                status, headers, data = e.code, e.headers, e.read()
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


# Monoskope's table exactly (server/src/events_table/mod.rs, CREATE_TABLE).
CREATE = (
    'CREATE TABLE IF NOT EXISTS "event_records" ("event_id" uuid, "event_type" varchar(250), '
    '"aggregate_id" uuid, "aggregate_type" varchar(250), "aggregate_version" bigint, '
    '"timestamp" timestamptz, "metadata" jsonb, "data" jsonb, PRIMARY KEY ("event_id"), '
    'UNIQUE ("aggregate_id", "aggregate_type", "aggregate_version"))'
)


def proc_cpu_rss(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200, help="events per second")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--interval", default="5s")
    ap.add_argument("--bus", action="store_true", help="publish each event to RabbitMQ too")
    ap.add_argument("--out")
    ap.add_argument("--idle-events", type=int, default=0,
                    help="measure the idle cost on a store of this many events")
    ap.add_argument("--compact", help="--continuous-compact for the run; then compare restores")
    ap.add_argument("--s3", choices=["moto", "versitygw"], default="moto",
                    help="the S3 server: moto (one Python process) or versitygw (concurrent, checks signatures)")
    a = ap.parse_args()
    pg = os.environ["TEST_PG_URL"]
    s3 = os.environ["TEST_S3_ENDPOINT" if a.s3 == "moto" else "TEST_VERSITYGW_ENDPOINT"]
    tag = uuid.uuid4().hex[:8]
    db = f"bench_continuous_{tag}"
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    url = pg.rsplit("/", 1)[0] + "/" + db
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(CREATE)
    bucket = f"bench-{tag}"
    import boto3  # noqa: PLC0415 - moto's dependency, there wherever moto is
    boto3.client("s3", endpoint_url=s3, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    counter = Counter()
    proxy, proxy_url = start_counting_proxy(s3, counter)
    key = f"/tmp/bench-continuous-{tag}.key"
    subprocess.run([SERVER, "keygen", "--out", key], check=True, capture_output=True)
    catalog = f"sqlite:///tmp/bench-continuous-{tag}.db"
    env = dict(os.environ, RUST_LOG="warn", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               BACKUP_EMIT_EVENTS="false")
    if a.bus:
        env["BUS_URL"] = os.environ["TEST_AMQP_URL"]
    dest = f"s3://{bucket}/m8"
    if a.idle_events:
        preload(url, a.idle_events)
    extra = ["--continuous-compact", a.compact] if a.compact else []
    srv = subprocess.Popen(
        [SERVER, "serve", "--listen", "127.0.0.1:0", "--events-db", url, "--destination", dest,
         "--s3-endpoint", proxy_url, "--key-file", key, "--catalog", catalog, "--continuous",
         "--continuous-interval", a.interval] + extra,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    srv.stdout.readline()  # listening
    time.sleep(2)
    if a.idle_events:
        result = idle(a, srv, counter, url, dest, s3, env)
        finish(a, srv, proxy, pg, db, result)
        return
    publisher = None
    if a.bus:
        import pika  # noqa: PLC0415 - only with --bus
        params = pika.URLParameters(os.environ["TEST_AMQP_URL"])
        publisher = pika.BlockingConnection(params).channel()
        publisher.exchange_declare("m8_events", "topic", durable=True)
    cpu0, _ = proc_cpu_rss(srv.pid)
    requests0 = dict(counter.by_method)
    aggs = [uuid.uuid4() for _ in range(max(10, a.rate // 10))]
    versions = {g: 0 for g in aggs}
    committed = []  # (event_id, commit time)
    start = time.time()
    n = a.rate * a.seconds
    with psycopg.connect(url, autocommit=True) as c:
        for i in range(n):
            due = start + i / a.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            g = aggs[i % len(aggs)]
            versions[g] += 1
            eid = uuid.uuid4()
            c.execute(
                'INSERT INTO event_records VALUES (%s, %s, %s, %s, %s, now(), %s, %s)',
                (eid, "UserUpdated", g, "User", versions[g], '{"x-auth-id": "bench"}',
                 json.dumps({"n": i})))
            t = time.time()
            committed.append((str(eid), t))
            if publisher is not None:
                publisher.basic_publish("m8_events", "m8.User.UserUpdated", json.dumps({
                    "EventType": "UserUpdated", "AggregateID": str(g), "AggregateType": "User",
                    "AggregateVersion": versions[g]}))
    wrote = time.time() - start
    # Wait until the destination holds every event.
    deadline = time.time() + 120
    manifests = []
    while time.time() < deadline:
        out = subprocess.run(
            [SERVER, "list", "--json", "--destination", dest, "--s3-endpoint", s3],
            env=env, capture_output=True, text=True)
        if out.returncode == 0:
            manifests = json.loads(out.stdout)
            if sum(m["events"] for m in manifests) >= n:
                break
        time.sleep(1)
    if a.compact:
        result = compaction(a, n, url, dest, s3, env, key, catalog)
        finish(a, srv, proxy, pg, db, result)
        return
    cpu1, rss = proc_cpu_rss(srv.pid)
    requests = {k: v - requests0.get(k, 0) for k, v in counter.by_method.items()}
    srv.terminate()
    srv.wait()
    proxy.shutdown()
    # Each event's segment: the first (oldest) whose last event is at or after it. The events'
    # own timestamps are the database's now() at insert; commit times are the writer's clock
    # on the same machine.
    lat = latencies(url, manifests, committed)

    hours = wrote / 3600
    puts = sum(v for k, v in requests.items() if k in ("PUT", "POST", "DELETE"))
    gets = sum(v for k, v in requests.items() if k in ("GET", "HEAD"))
    result = {
        "rate": a.rate, "seconds": a.seconds, "interval": a.interval, "bus": a.bus,
        "events": n, "written_in_s": round(wrote, 1),
        "segments": sum(1 for m in manifests if m["note"] == "continuous segment"),
        "latency_s": summary(lat),
        "cpu_s_per_1000_events": round((cpu1 - cpu0) / n * 1000, 3),
        "peak_rss_mib": round(rss / 2**20, 1),
        "s3_requests": requests,
        "s3_requests_per_hour": {"put_post_delete": round(puts / hours), "get_head": round(gets / hours)},
        "s3_cost_per_month_usd": round((puts / hours * PUT_PER_1000 + gets / hours * GET_PER_1000)
                                       / 1000 * 24 * 30, 2),
    }
    report(a, pg, db, result)


def latencies(url, manifests, committed):
    """For each committed (event id, commit time): the time until the segment that holds it (the
    oldest whose last event is at or after it) completed, sorted."""
    with psycopg.connect(url) as c:
        ts = {str(r[0]): r[1].timestamp() for r in c.execute(
            'SELECT event_id, "timestamp" FROM event_records')}
    segs = sorted(
        ((time_of(m["last_event_time"]), time_of(m["completed_at"])) for m in manifests
         if m["events"] > 0),
    )
    lat = []
    j = 0
    for eid, t_commit in sorted(committed, key=lambda x: ts[x[0]]):
        e_ts = ts[eid]
        while j < len(segs) and segs[j][0] < e_ts - 1e-3:
            j += 1
        if j == len(segs):
            break
        lat.append(segs[j][1] - t_commit)
    return sorted(lat)


def summary(lat):
    """p50, p99 and max of sorted latencies."""
    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3) if lat else None
    return {"p50": pct(50), "p99": pct(99), "max": round(lat[-1], 3) if lat else None,
            "measured": len(lat)}


def preload(url, n):
    """n events in 1,000 aggregates, stored in batches of 100,000 (one statement each)."""
    with psycopg.connect(url, autocommit=True) as c:
        for first in range(0, n, 100_000):
            c.execute(
                "INSERT INTO event_records SELECT gen_random_uuid(), 'UserUpdated', "
                "('00000000-0000-4000-8000-' || lpad(to_hex(i %% 1000), 12, '0'))::uuid, 'User', "
                "i / 1000 + 1, now(), '{\"x-auth-id\": \"bench\"}'::jsonb, "
                "jsonb_build_object('n', i) FROM generate_series(%s::bigint, %s::bigint) AS i",
                (first, min(n, first + 100_000) - 1))


def table_reads(url):
    """Rows PostgreSQL has read from event_records (sequential and index scans), and scans."""
    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0), "
            "coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'event_records'").fetchone()
        idx = c.execute(
            "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
            "WHERE relname = 'event_records'").fetchone()[0]
    return int(row[0]) + int(idx), int(row[1])


def idle(a, srv, counter, url, dest, s3, env):
    """The idle cost: after the first full backup, no writes for a.seconds."""
    deadline = time.time() + 600
    while time.time() < deadline:
        out = subprocess.run([SERVER, "list", "--json", "--destination", dest, "--s3-endpoint", s3],
                             env=env, capture_output=True, text=True)
        if out.returncode == 0 and sum(m["events"] for m in json.loads(out.stdout)) >= a.idle_events:
            break
        time.sleep(2)
    time.sleep(5)  # the statistics of the full backup's read settle
    cpu0, _ = proc_cpu_rss(srv.pid)
    req0 = dict(counter.by_method)
    rows0, scans0 = table_reads(url)
    time.sleep(a.seconds)
    cpu1, rss = proc_cpu_rss(srv.pid)
    rows1, scans1 = table_reads(url)
    req = {k: v - req0.get(k, 0) for k, v in counter.by_method.items() if v - req0.get(k, 0)}
    per_hour = 3600 / a.seconds
    return {
        "mode": "idle", "store_events": a.idle_events, "seconds": a.seconds,
        "interval": a.interval,
        "cpu_s_per_hour": round((cpu1 - cpu0) * per_hour, 2),
        "peak_rss_mib": round(rss / 2**20, 1),
        "s3_requests": req,
        "s3_requests_per_hour": {k: round(v * per_hour) for k, v in req.items()},
        "whole_store_reads": round((rows1 - rows0) / a.idle_events, 1),
        "table_rows_read_per_hour": round((rows1 - rows0) * per_hour),
        "whole_store_reads_per_hour": round((rows1 - rows0) * per_hour / a.idle_events, 1),
        "table_scans_per_hour": round((scans1 - scans0) * per_hour),
    }


def restore_seconds(env, args, url_base, tag, runs=3):
    """Best of `runs` restores (`args` name the backup and where it is) into fresh databases."""
    best = None
    for k in range(runs):
        db = f"bench_restore_{tag}_{k}"
        with psycopg.connect(url_base + "/postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {db}")
        t = time.time()
        out = subprocess.run([SERVER, "restore"] + args + ["--events-db", f"{url_base}/{db}"],
                             env=env, capture_output=True, text=True)
        took = time.time() - t
        if out.returncode != 0:
            raise SystemExit(f"restore failed: {out.stderr}")
        with psycopg.connect(url_base + "/postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE {db} WITH (FORCE)")
        best = took if best is None else min(best, took)
    return best


def compaction(a, n, url, dest, s3, env, key, catalog):
    """After the run: wait for the last compaction, then compare restore latest of the chain with
    a restore of one full backup of the same events."""
    deadline = time.time() + 180
    chain = []
    while time.time() < deadline:
        out = subprocess.run([SERVER, "list", "--json", "--destination", dest, "--s3-endpoint", s3],
                             env=env, capture_output=True, text=True)
        chain = json.loads(out.stdout) if out.returncode == 0 else []
        if sum(m["events"] for m in chain) == n and sum(m["kind"] == "segment" for m in chain) <= 1:
            break
        time.sleep(1)
    base = url.rsplit("/", 1)[0]
    common = ["--s3-endpoint", s3, "--key-file", key, "--catalog", catalog.replace(".db", "-r.db")]
    chain_s = restore_seconds(env, ["latest", "--destination", dest] + common, base, "chain")
    full_dest = dest + "-full"
    out = subprocess.run([SERVER, "backup", "--events-db", url, "--destination", full_dest] + common,
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"full backup failed: {out.stderr}")
    full_s = restore_seconds(env, ["latest", "--destination", full_dest] + common, base, "full")
    return {
        "mode": "compaction", "s3": a.s3, "rate": a.rate, "seconds": a.seconds, "interval": a.interval,
        "compact": a.compact, "events": n,
        "chain": {"archives": len(chain),
                  "kinds": {k: sum(m["kind"] == k for m in chain) for k in ("full", "incremental", "segment")},
                  "compacted": sum(1 for m in chain if (m.get("note") or "").startswith("compacted from"))},
        "restore_chain_s": round(chain_s, 2), "restore_full_s": round(full_s, 2),
        "ratio": round(chain_s / full_s, 2),
    }


def finish(a, srv, proxy, pg, db, result):
    """Stops the service and the proxy, then reports."""
    srv.terminate()
    srv.wait()
    proxy.shutdown()
    report(a, pg, db, result)


def report(a, pg, db, result):
    """Prints the result (and writes it to --out), and drops the benchmark's database."""
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f"DROP DATABASE {db} WITH (FORCE)")


def time_of(rfc3339):
    from datetime import datetime
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
