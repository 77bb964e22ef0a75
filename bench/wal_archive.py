#!/usr/bin/env python3
"""Continuous backup beside PostgreSQL's own continuous archiving: same write load, same run
(docs/BENCHMARKS.md, "Continuous backup against WAL archiving").

What an operator would pick instead is WAL archiving, the way pgBackRest and WAL-G back
PostgreSQL up continuously: `archive_mode = on`, `archive_timeout` = how stale the archive may
get, and an `archive_command` that ships each 16 MiB WAL segment. This starts a PostgreSQL
cluster of its own with archiving to a directory (the command copies the segment, then notes when
it was done), runs `backup-server serve --continuous` (release build) on the events table in it,
writing to moto S3 through a counting proxy, and one writer storing events as the EventStore
does, noting each commit's WAL position. For every event: the time from its commit until our
segment holding it completed, and until the WAL segment holding its commit was archived. Also
what each ships per hour (objects and bytes; WAL segments also zstd-compressed, as WAL-G and
pgBackRest would compress them). Durability at the archive directory is a lower bound for WAL
archiving (a real archive_command then uploads 16 MiB to S3).

archive_timeout is set, but its switch never fired in this sandbox (PostgreSQL 15: a row
inserted, 10 s waited with archive_timeout = 2 s, nothing archived; `pg_switch_wal()` archived at
once), so a thread does what the checkpointer's archive_timeout does: `pg_switch_wal()` every
interval, which switches only when WAL was written since the last switch.

    python3 bench/wal_archive.py --rate 200 --seconds 120 --interval 5s [--out FILE]
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import continuous  # noqa: E402 - the shared helpers of bench/continuous.py

PORT = 55441
SEGMENT = 16 << 20


def as_postgres(cmd):
    """Runs a shell command as the postgres user when we are root (initdb refuses root)."""
    if os.getuid() == 0:
        return subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], check=True,
                              capture_output=True, text=True)
    return subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, text=True)


def seconds_of(interval):
    """`5s` → 5.0."""
    return float(interval.rstrip("s"))


def wal_name(lsn_text):
    """The name of the WAL segment (timeline 1, 16 MiB) that holds an LSN like `0/1A2B3C4`."""
    hi, lo = (int(x, 16) for x in lsn_text.split("/"))
    return f"{1:08X}{hi:08X}{lo >> 24:08X}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--interval", default="5s", help="ours, and archive_timeout")
    ap.add_argument("--out")
    a = ap.parse_args()
    pgbin = os.path.dirname(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1])
    tag = uuid.uuid4().hex[:8]
    root = f"/tmp/bench-wal-{tag}"
    data, archive = f"{root}/data", f"{root}/archive"
    os.makedirs(archive)
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(archive, "postgres", "postgres")
    as_postgres(f"{pgbin}/initdb -D {data} -U postgres --auth=trust -E UTF8")
    seconds = int(seconds_of(a.interval))
    command = (f"cp %p {archive}/%f.tmp && mv {archive}/%f.tmp {archive}/%f"
               f" && date +%%s.%%N > {archive}/%f.done")
    with open(f"{data}/postgresql.conf", "a") as conf:
        conf.write(f"port = {PORT}\nunix_socket_directories = '/tmp'\n"
                   "listen_addresses = '127.0.0.1'\nwal_level = replica\narchive_mode = on\n"
                   f"archive_timeout = {seconds}\narchive_command = '{command}'\n")
    as_postgres(f"{pgbin}/pg_ctl -D {data} -l {root}/server.log -w start")
    try:
        result = run(a, f"postgres://postgres@127.0.0.1:{PORT}", archive, tag)
    except Exception:
        sys.stderr.write(open(f"{root}/server.log").read()[-3000:])
        sys.stderr.write(f"archive: {sorted(os.listdir(archive))}\n")
        raise
    finally:
        as_postgres(f"{pgbin}/pg_ctl -D {data} -m fast -w stop")
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


def run(a, base, archive, tag):
    url = f"{base}/postgres"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(continuous.CREATE)
    s3 = os.environ["TEST_S3_ENDPOINT"]
    bucket = f"bench-wal-{tag}"
    urllib.request.urlopen(urllib.request.Request(f"{s3}/{bucket}", method="PUT")).read()
    counter = continuous.Counter()
    proxy, proxy_url = continuous.start_counting_proxy(s3, counter)
    key = f"/tmp/bench-wal-{tag}.key"
    subprocess.run([continuous.SERVER, "keygen", "--out", key], check=True, capture_output=True)
    env = dict(os.environ, RUST_LOG="warn", AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", BACKUP_EMIT_EVENTS="false")
    dest = f"s3://{bucket}/m8"
    srv = subprocess.Popen(
        [continuous.SERVER, "serve", "--listen", "127.0.0.1:0", "--events-db", url,
         "--destination", dest, "--s3-endpoint", proxy_url, "--key-file", key, "--catalog",
         f"sqlite:///tmp/bench-wal-{tag}.db", "--continuous", "--continuous-interval", a.interval],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    srv.stdout.readline()
    time.sleep(2)
    archived0 = set(glob.glob(f"{archive}/*.done"))
    stop = threading.Event()

    def switch_every_interval():
        with psycopg.connect(url, autocommit=True) as c:
            while not stop.wait(seconds_of(a.interval)):
                c.execute("SELECT pg_switch_wal()")
    switcher = threading.Thread(target=switch_every_interval, daemon=True)
    switcher.start()
    req0 = dict(counter.by_method)
    aggs = [uuid.uuid4() for _ in range(max(10, a.rate // 10))]
    versions = {g: 0 for g in aggs}
    committed, lsns = [], []
    n = a.rate * a.seconds
    start = time.time()
    with psycopg.connect(url, autocommit=True) as c:
        for i in range(n):
            delay = start + i / a.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            g = aggs[i % len(aggs)]
            versions[g] += 1
            eid = uuid.uuid4()
            c.execute('INSERT INTO event_records VALUES (%s, %s, %s, %s, %s, now(), %s, %s)',
                      (eid, "UserUpdated", g, "User", versions[g], '{"x-auth-id": "bench"}',
                       json.dumps({"n": i})))
            t = time.time()
            # At or after the commit record: the segment that must be archived for it.
            lsn = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            committed.append((str(eid), t))
            lsns.append((wal_name(lsn), t))
    wrote = time.time() - start
    deadline = time.time() + 120
    manifests = []
    while time.time() < deadline:
        out = subprocess.run([continuous.SERVER, "list", "--json", "--destination", dest,
                              "--s3-endpoint", s3], env=env, capture_output=True, text=True)
        if out.returncode == 0:
            manifests = json.loads(out.stdout)
            if sum(m["events"] for m in manifests) >= n:
                break
        time.sleep(1)
    requests = {k: v - req0.get(k, 0) for k, v in counter.by_method.items()}
    srv.terminate()
    srv.wait()
    proxy.shutdown()
    # The last WAL segment is archived at most archive_timeout after the last write.
    needed = {name for name, _ in lsns}
    deadline = time.time() + 60
    while time.time() < deadline and not all(os.path.exists(f"{archive}/{s}.done") for s in needed):
        time.sleep(0.5)
    stop.set()
    done = {}
    for s in needed:
        with open(f"{archive}/{s}.done") as f:
            done[s] = float(f.read())
    wal_lat = sorted(done[s] - t for s, t in lsns)
    ours = continuous.latencies(url, manifests, committed)
    new = sorted(set(glob.glob(f"{archive}/*.done")) - archived0)
    segs = [p[:-len(".done")] for p in new]
    zst = sum(len(subprocess.run(["zstd", "-q", "-3", "-c", s], capture_output=True).stdout)
              for s in segs)
    per_hour = 3600 / wrote
    puts = sum(v for k, v in requests.items() if k in ("PUT", "POST", "DELETE"))
    our_bytes = sum(m["bytes"] for m in manifests if m["kind"] == "segment")
    return {
        "rate": a.rate, "seconds": a.seconds, "interval": a.interval, "events": n,
        "ours": {"latency_s": continuous.summary(ours),
                 "segments": sum(m["kind"] == "segment" for m in manifests),
                 "objects_written_per_hour": round(puts * per_hour),
                 "segment_bytes_per_hour": round(our_bytes * per_hour)},
        "wal_archiving": {"latency_s": continuous.summary(wal_lat),
                          "archive_timeout": a.interval, "segments": len(segs),
                          "objects_per_hour": round(len(segs) * per_hour),
                          "bytes_per_hour": round(len(segs) * SEGMENT * per_hour),
                          "zstd3_bytes_per_hour": round(zst * per_hour)},
    }


if __name__ == "__main__":
    sys.exit(main())
