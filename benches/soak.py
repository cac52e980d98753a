#!/usr/bin/env python3
"""benches/soak.py — a long mixed load through capgate with a partition every few minutes.

What it does
  * starts the two-site bed (scripts/sites up, in a temp SITES_DIR: site A's primary, site B's
    replica behind capgate-link) and capgate (target/release/capgate, or CAPGATE_BIN) for site
    A with an admin listener and a policy with one table of each mode: sync, async, bounded
    (max_lag 5s) and local;
  * runs WORKERS client threads (psycopg 3) for DURATION seconds, each looping over short
    transactions: relayed reads, and writes to each table (autocommit and in transactions);
  * every PARTITION_EVERY seconds cuts the replica link (blackhole) for PARTITION_FOR seconds;
  * every 10 s samples capgate's RSS, open file descriptors and threads from /proc, and the
    errors seen, by SQLSTATE;
  * after the load stops and the link is restored, waits for the sessions to close and samples
    the baseline again.

What it reports (stdout, and JSON in OUT)
  RSS after warm-up (the first sample after WARMUP seconds) and at the end, the largest, and the
  slope of a least-squares line over the samples after warm-up (KiB per hour); file descriptors
  and threads before the load, at its peak and after it; transactions by kind; errors by
  SQLSTATE, split into expected refusals (55000: a sync or bounded write refused while the
  replica is partitioned or lagging) and the rest. Exit status 1 if any unexpected error was seen.

Usage: benches/soak.py   (environment: DURATION=3600 WORKERS=8 PARTITION_EVERY=180
        PARTITION_FOR=20 WARMUP=120 OUT=target/bench/soak.json CAPGATE_BIN=...)
Loopback only: every server and link it starts listens on 127.0.0.1.
"""
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("DURATION", "3600"))
WORKERS = int(os.environ.get("WORKERS", "8"))
PARTITION_EVERY = int(os.environ.get("PARTITION_EVERY", "180"))
PARTITION_FOR = int(os.environ.get("PARTITION_FOR", "20"))
WARMUP = int(os.environ.get("WARMUP", "120"))
OUT = os.environ.get("OUT", os.path.join(ROOT, "target/bench/soak.json"))
CAPGATE_BIN = os.environ.get("CAPGATE_BIN", os.path.join(ROOT, "target/release/capgate"))
TABLES = {"sync": "soak_sync", "async": "soak_async", "bounded": "soak_bounded", "local": "soak_local"}
EXPECTED = {"55000"}


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sites(env: dict, *args: str) -> str:
    return subprocess.run([os.path.join(ROOT, "scripts/sites"), *args], env=env, check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_sample(pid: int) -> dict:
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(next(l.split()[1] for l in status.splitlines() if l.startswith(k + ":")))
    return {"rss_kib": field("VmRSS"), "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": field("Threads")}


def slope_per_hour(points: list) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 3600


class Load:
    """The client threads and what they saw."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = Counter()
        self.errors = Counter()
        self.examples = {}

    def worker(self, n: int) -> None:
        rng = random.Random(n)
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                kind = rng.choice(["read", "read", "sync", "async", "bounded", "local", "txn"])
                key = rng.randrange(1000)
                if kind == "read":
                    conn.execute("SELECT count(*) FROM soak_local WHERE id < %s", (key,)).fetchone()
                elif kind == "txn":
                    with conn.transaction():
                        for mode in ("async", "local"):
                            conn.execute(f"UPDATE {TABLES[mode]} SET v = v + 1 WHERE id = %s", (key,))
                else:
                    conn.execute(f"UPDATE {TABLES[kind]} SET v = v + 1 WHERE id = %s", (key,))
                with self.lock:
                    self.done[kind] += 1
            except psycopg.Error as e:
                code = getattr(e, "sqlstate", None) or type(e).__name__
                with self.lock:
                    self.errors[code] += 1
                    self.examples.setdefault(code, str(e).splitlines()[0][:200])
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="capgate-soak.")
    os.chmod(tmp, 0o755)
    env = dict(os.environ, SITES_DIR=os.path.join(tmp, "sites"))
    capgate = None
    try:
        log("starting the two-site bed")
        sites(env, "up")
        urls = dict(line.split("=", 1) for line in sites(env, "env").split())
        for url in (urls["A_PRIMARY_URL"], urls["B_REPLICA_URL_DIRECT"]):
            with psycopg.connect(url, autocommit=True) as c:
                for t in TABLES.values():
                    c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v bigint NOT NULL)")
                    c.execute(f"INSERT INTO {t} SELECT g, 0 FROM generate_series(0, 999) g")
        port, admin = free_port(), free_port()
        policy = os.path.join(tmp, "policy.toml")
        open(policy, "w").write(
            'default = "local"\n'
            '[[table]]\nmatch = "public.soak_sync"\nmode = "sync"\non_partition = "fail"\n'
            '[[table]]\nmatch = "public.soak_async"\nmode = "async"\non_conflict = "skip"\n'
            '[[table]]\nmatch = "public.soak_bounded"\nmode = "bounded"\nmax_lag = "5s"\non_partition = "fail"\non_conflict = "skip"\n')
        config = os.path.join(tmp, "capgate.toml")
        text = open(os.path.join(env["SITES_DIR"], "capgate-a.toml")).read()
        # The bed's own listen, admin and policy lines give way to the soak's (whatever ports
        # the bed wrote; a line it lacks is added).
        own = {"listen": f'"127.0.0.1:{port}"', "admin": f'"127.0.0.1:{admin}"', "policy": f'"{policy}"'}
        head, sep, tail = text.partition("\n[")
        lines = [ln for ln in head.splitlines() if ln.split("=", 1)[0].strip() not in own]
        text = "\n".join(lines + [f"{k} = {v}" for k, v in own.items()]) + "\n" + sep.lstrip("\n") + tail
        open(config, "w").write(text)
        capgate = subprocess.Popen([CAPGATE_BIN, "run", "--config", config], stdout=open(os.path.join(tmp, "capgate.log"), "w"),
                                   stderr=subprocess.STDOUT)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
        for _ in range(100):
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.Error:
                time.sleep(0.1)
        # The load starts once the shipper runs: a write accepted before capgate has
        # installed its schema on the primary fails (seen in the first runs, reported).
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=2) as r:
                    if all(x.get("shipping") == "running" for x in json.load(r)["replicas"]):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        before = proc_sample(capgate.pid)
        log(f"capgate pid {capgate.pid}: {before}; load for {DURATION} s with {WORKERS} clients")
        load = Load(dsn)
        threads = [threading.Thread(target=load.worker, args=(i,), daemon=True) for i in range(WORKERS)]
        for t in threads:
            t.start()
        samples, partitions = [], 0
        start = time.monotonic()
        cut_until = None
        next_cut = PARTITION_EVERY
        while (now := time.monotonic() - start) < DURATION:
            if cut_until is None and now >= next_cut:
                sites(env, "link", "blackhole")
                partitions += 1
                cut_until = now + PARTITION_FOR
                log(f"partition {partitions}: link cut for {PARTITION_FOR} s")
            elif cut_until is not None and now >= cut_until:
                sites(env, "link", "restore")
                cut_until = None
                next_cut = now + PARTITION_EVERY
            s = proc_sample(capgate.pid)
            with load.lock:
                s.update(t=round(now, 1), done=sum(load.done.values()), errors=dict(load.errors))
            samples.append(s)
            log(f"t={s['t']} rss={s['rss_kib']} KiB fds={s['fds']} threads={s['threads']} tx={s['done']} errors={s['errors']}")
            time.sleep(10)
        load.stop.set()
        for t in threads:
            t.join(30)
        if cut_until is not None:
            sites(env, "link", "restore")
        time.sleep(5)
        after = proc_sample(capgate.pid)
        steady = [(s["t"], s["rss_kib"]) for s in samples if s["t"] >= WARMUP] or [(s["t"], s["rss_kib"]) for s in samples]
        unexpected = {k: v for k, v in load.errors.items() if k not in EXPECTED}
        report = {
            "duration_s": DURATION, "workers": WORKERS, "partitions": partitions,
            "partition_every_s": PARTITION_EVERY, "partition_for_s": PARTITION_FOR, "warmup_s": WARMUP,
            "rss_kib": {"before": before["rss_kib"], "after_warmup": steady[0][1], "end": steady[-1][1],
                        "max": max(v for _, v in steady), "slope_kib_per_hour": round(slope_per_hour(steady), 1),
                        "after_load": after["rss_kib"]},
            "fds": {"before": before["fds"], "peak": max(s["fds"] for s in samples), "after": after["fds"]},
            "threads": {"before": before["threads"], "peak": max(s["threads"] for s in samples), "after": after["threads"]},
            "transactions": dict(load.done), "expected_refusals": {k: v for k, v in load.errors.items() if k in EXPECTED},
            "unexpected_errors": unexpected, "error_examples": load.examples, "samples": samples,
        }
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        json.dump(report, open(OUT, "w"), indent=1)
        r = report
        print(f"soak: {DURATION} s, {WORKERS} clients, {partitions} partitions of {PARTITION_FOR} s every {PARTITION_EVERY} s")
        print(f"RSS KiB: before {r['rss_kib']['before']}, after warm-up {r['rss_kib']['after_warmup']}, end {r['rss_kib']['end']}, "
              f"max {r['rss_kib']['max']}, slope {r['rss_kib']['slope_kib_per_hour']} KiB/h, after the load {r['rss_kib']['after_load']}")
        print(f"fds: before {r['fds']['before']}, peak {r['fds']['peak']}, after {r['fds']['after']}; "
              f"threads: before {r['threads']['before']}, peak {r['threads']['peak']}, after {r['threads']['after']}")
        print(f"transactions: {r['transactions']}")
        print(f"expected refusals: {r['expected_refusals']}; unexpected errors: {unexpected or 'none'}")
        for code in unexpected:
            print(f"  {code}: {load.examples[code]}")
        print(f"JSON: {OUT}")
        return 1 if unexpected else 0
    finally:
        if capgate is not None:
            capgate.terminate()
            try:
                capgate.wait(10)
            except subprocess.TimeoutExpired:
                capgate.kill()
        try:
            sites(env, "down")
        except subprocess.CalledProcessError:
            pass
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
