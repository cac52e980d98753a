#!/usr/bin/env python3
"""benches/soak.py — a long mixed load through capgate with a partition every few minutes.

What it does
  * starts the two-site bed (scripts/sites up, in a temp SITES_DIR: site A's primary, site B's
    replica behind capgate-link) and capgate (target/release/capgate, or CAPGATE_BIN) for site
    A, in a session of its own, with an admin listener and a policy with one table of each
    mode: sync, async, bounded (max_lag 5s) and local;
  * runs WORKERS client threads (psycopg 3) for DURATION seconds, each looping over short
    transactions: relayed reads, and writes to each table (autocommit and in transactions);
  * every PARTITION_EVERY seconds cuts the replica link (blackhole) for PARTITION_FOR seconds;
  * every 10 s samples capgate's RSS (split into anonymous memory and file pages), open file
    descriptors and threads from /proc, its live tokio tasks (main runtime, session workers)
    and sessions from /metrics, the errors seen by SQLSTATE, and the load average; every
    SMAPS_EVERY s the resident memory by kind of mapping (malloc's heaps, other anonymous,
    files) from /proc/PID/smaps;
  * with MALLOC_STATS=1 (needs gdb), glibc's malloc_stats() before the load, after warm-up and
    after the load (heap in use against what malloc holds), then malloc_trim(0) and the RSS
    after it; each call pauses capgate for a second or two;
  * after the load stops and the link is restored, waits for the sessions to close and samples
    the baseline again, with capgate's TCP connections by what is at the other end.

What it reports (stdout, and JSON in OUT)
  RSS after warm-up (the first sample after WARMUP seconds) and at the end, the largest, and the
  slope of a least-squares line over the samples after warm-up (KiB per hour), and the same
  points of each part of it; file descriptors, threads, tasks and sessions before the load, at
  their peak and after it; transactions by kind; errors by SQLSTATE, split into expected
  refusals (55000: a sync or bounded write refused while the replica is partitioned or lagging)
  and the rest. Exit status 1 if any unexpected error was seen.

Usage: benches/soak.py   (environment: DURATION=3600 WORKERS=8 PARTITION_EVERY=180
        PARTITION_FOR=20 WARMUP=120 SMAPS_EVERY=60 MALLOC_STATS=0 OUT=target/bench/soak.json
        CAPGATE_BIN=... CAPGATE_WRAP="heaptrack -o target/heap/soak" (a heap profile))
Loopback only: every server and link it starts listens on 127.0.0.1.
"""
import json
import os
import random
import signal
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
SMAPS_EVERY = int(os.environ.get("SMAPS_EVERY", "60"))
MALLOC_STATS = os.environ.get("MALLOC_STATS") == "1"
OUT = os.environ.get("OUT", os.path.join(ROOT, "target/bench/soak.json"))
CAPGATE_BIN = os.environ.get("CAPGATE_BIN", os.path.join(ROOT, "target/release/capgate"))
# A command capgate runs under, split on spaces (e.g. "heaptrack -o target/soak-heap"): a heap
# profile of the same load. RSS, descriptors and threads are then sampled from capgate itself.
CAPGATE_WRAP = os.environ.get("CAPGATE_WRAP", "").split()
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
    # RssFile is the binary's and libraries' pages read in as code paths first run (they
    # grow when a partition first exercises its code, and are not a leak); RssAnon is memory
    # the process allocated.
    return {"rss_kib": field("VmRSS"), "anon_kib": field("RssAnon"), "file_kib": field("RssFile"),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": field("Threads")}


def smaps(pid: int) -> dict:
    """Resident KiB by kind of mapping: malloc's heaps (the main arena's [heap] and the thread
    arenas, anonymous mappings aligned to glibc's 64 MiB heap size), other anonymous memory
    (thread stacks, large allocations malloc maps on their own, the runtime's), and files."""
    out = Counter()
    kind = None
    for line in open(f"/proc/{pid}/smaps"):
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            start = int(head[0].split("-")[0], 16)
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]" or (not name and start % (64 << 20) == 0):
                kind = "malloc_heaps_kib"
            elif not name or name.startswith("["):
                kind = "other_anon_kib"
            else:
                kind = "files_kib"
        elif head[0] == "Rss:":
            out[kind] += int(head[1])
    return dict(out)


def malloc_stats(pid: int, log_path: str) -> dict:
    """glibc's own count (MALLOC_STATS=1; needs gdb and ptrace): capgate is paused for a
    second or two while gdb calls malloc_stats(), which writes to capgate's stderr (its log)."""
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"], capture_output=True, timeout=60)
    text = open(log_path).read()
    total = text.rsplit("Total (incl. mmap):", 1)
    if len(total) < 2:
        return {}
    nums = [int(l.split("=")[1]) for l in total[1].splitlines()[1:3]]
    arenas = text.rsplit("Arena 0:", 1)[1].count("Arena ") + 1 if "Arena 0:" in text else 0
    return {"malloc_system_kib": nums[0] // 1024, "malloc_in_use_kib": nums[1] // 1024, "arenas": arenas}


def capgate_pid(started: int) -> int:
    """capgate's own pid: `started` itself, or (under CAPGATE_WRAP) its descendant running CAPGATE_BIN."""
    if not CAPGATE_WRAP:
        return started
    want = os.path.realpath(CAPGATE_BIN)
    for _ in range(300):
        parents = {}
        for d in os.listdir("/proc"):
            try:
                parents[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (ValueError, OSError, IndexError):
                pass
        for pid in parents:
            p, seen = pid, 0
            while p in parents and p != started and seen < 50:
                p, seen = parents[p], seen + 1
            try:
                if p == started and os.path.realpath(f"/proc/{pid}/exe") == want:
                    return pid
            except OSError:
                pass
        time.sleep(0.1)
    return started


def peers(pid: int, names: dict) -> dict:
    """capgate's established TCP connections by what is at the other end: `names` maps a port
    to a name (a remote port: the primary, the replica's link; the listen port: clients)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = Counter()
    for table in ("tcp", "tcp6"):
        try:
            rows = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "01" or f[9] not in inodes:  # 01: ESTABLISHED
                continue
            local, remote = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
            out[names.get(("local", local)) or names.get(("remote", remote)) or f"port {remote}"] += 1
    return dict(out)


def tasks(admin: int) -> dict:
    """Live tokio tasks by runtime and client sessions, from capgate's /metrics (empty if it does not answer)."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('capgate_tasks{runtime="'):
                    out["tasks_" + line.split('"')[1]] = int(float(line.split()[-1]))
                elif line.startswith("capgate_client_connections "):
                    out["sessions"] = int(float(line.split()[-1]))
    except OSError:
        pass
    return out


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
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) end the run through the
    # cleanup below: capgate stopped, the bed taken down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="capgate-soak.")
    os.chmod(tmp, 0o755)
    env = dict(os.environ, SITES_DIR=os.path.join(tmp, "sites"))
    capgate, pid = None, None
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
        # capgate runs in a session of its own, as a service manager starts a daemon: with the
        # kernel's autogroup scheduling a proxy in the load generator's session shares that
        # session's CPU slice with the clients and is starved (decision 0037, benches/lib.sh).
        capgate = subprocess.Popen(CAPGATE_WRAP + [CAPGATE_BIN, "run", "--config", config],
                                   stdout=open(os.path.join(tmp, "capgate.log"), "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
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
        pid = capgate_pid(capgate.pid)
        capgate_log = os.path.join(tmp, "capgate.log")
        port_of = lambda url: int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        ends = {("local", port): "clients", ("local", admin): "admin clients", ("remote", port_of(urls["A_PRIMARY_URL"])): "primary",
                ("remote", port_of(urls["B_REPLICA_URL_VIA_LINK"])): "replica (via the link)"}
        connections_before = peers(pid, ends)
        heap = {}
        before = proc_sample(pid) | tasks(admin) | smaps(pid)
        if MALLOC_STATS:
            heap["before"] = malloc_stats(pid, capgate_log)
        log(f"capgate pid {pid}: {before}; load for {DURATION} s with {WORKERS} clients")
        load = Load(dsn)
        threads = [threading.Thread(target=load.worker, args=(i,), daemon=True) for i in range(WORKERS)]
        for t in threads:
            t.start()
        samples, partitions, last_smaps = [], 0, 0.0
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
            s = proc_sample(pid) | tasks(admin)
            if now - last_smaps >= SMAPS_EVERY:
                s |= smaps(pid)
                last_smaps = now
            if MALLOC_STATS and "after_warmup" not in heap and now >= WARMUP:
                heap["after_warmup"] = malloc_stats(pid, capgate_log) | {"t": round(now, 1)}
                s |= heap["after_warmup"]
            with load.lock:
                s.update(t=round(now, 1), done=sum(load.done.values()), errors=dict(load.errors), load=os.getloadavg()[0])
            samples.append(s)
            log(f"t={s['t']} rss={s['rss_kib']} KiB (anon {s['anon_kib']}, file {s['file_kib']}"
                + (f", heaps {s['malloc_heaps_kib']}, other anon {s['other_anon_kib']}" if "malloc_heaps_kib" in s else "")
                + (f", malloc in use {s['malloc_in_use_kib']} of {s['malloc_system_kib']}" if "malloc_in_use_kib" in s else "")
                + f") fds={s['fds']} threads={s['threads']} tasks={s.get('tasks_main')}+{s.get('tasks_sessions')} "
                f"sessions={s.get('sessions')} tx={s['done']} errors={s['errors']} load={os.getloadavg()[0]:.1f}")
            time.sleep(10)
        load.stop.set()
        for t in threads:
            t.join(30)
        if cut_until is not None:
            sites(env, "link", "restore")
        time.sleep(5)
        after = proc_sample(pid) | tasks(admin) | smaps(pid)
        connections = {"before": connections_before, "after": peers(pid, ends)}
        if MALLOC_STATS:
            heap["after_load"] = malloc_stats(pid, capgate_log)
            # What of the resident heap is free memory malloc keeps: malloc_trim(0) hands the
            # free pages of every arena back to the kernel; RSS after it is what is in use
            # (plus fragments).
            subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"], capture_output=True, timeout=60)
            heap["after_trim"] = proc_sample(pid) | smaps(pid) | malloc_stats(pid, capgate_log)
        steady = [(s["t"], s["rss_kib"]) for s in samples if s["t"] >= WARMUP] or [(s["t"], s["rss_kib"]) for s in samples]
        unexpected = {k: v for k, v in load.errors.items() if k not in EXPECTED}
        report = {
            "duration_s": DURATION, "workers": WORKERS, "partitions": partitions,
            "partition_every_s": PARTITION_EVERY, "partition_for_s": PARTITION_FOR, "warmup_s": WARMUP,
            "rss_kib": {"before": before["rss_kib"], "after_warmup": steady[0][1], "end": steady[-1][1],
                        "max": max(v for _, v in steady), "slope_kib_per_hour": round(slope_per_hour(steady), 1),
                        "after_load": after["rss_kib"]},
            "rss_split_kib": {k: {"before": before.get(k), "after_warmup": next((x[k] for x in samples if x["t"] >= WARMUP and k in x), None),
                                  "end": next((x[k] for x in reversed(samples) if k in x), None), "after_load": after.get(k)}
                              for k in ("anon_kib", "file_kib", "malloc_heaps_kib", "other_anon_kib", "files_kib")},
            "malloc_stats": heap,
            "fds": {"before": before["fds"], "peak": max(s["fds"] for s in samples), "after": after["fds"]},
            "tcp_connections": connections,
            "threads": {"before": before["threads"], "peak": max(s["threads"] for s in samples), "after": after["threads"]},
            "tasks": {k: {"before": before.get(k), "peak": max((s.get(k) or 0) for s in samples), "after": after.get(k)}
                      for k in ("tasks_main", "tasks_sessions", "sessions")},
            "load_average_1m": {"mean": round(sum(s["load"] for s in samples) / len(samples), 1), "max": max(s["load"] for s in samples)},
            "transactions": dict(load.done), "expected_refusals": {k: v for k, v in load.errors.items() if k in EXPECTED},
            "unexpected_errors": unexpected, "error_examples": load.examples, "samples": samples,
        }
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        json.dump(report, open(OUT, "w"), indent=1)
        r = report
        print(f"soak: {DURATION} s, {WORKERS} clients, {partitions} partitions of {PARTITION_FOR} s every {PARTITION_EVERY} s")
        print(f"RSS KiB: before {r['rss_kib']['before']}, after warm-up {r['rss_kib']['after_warmup']}, end {r['rss_kib']['end']}, "
              f"max {r['rss_kib']['max']}, slope {r['rss_kib']['slope_kib_per_hour']} KiB/h, after the load {r['rss_kib']['after_load']}")
        for k, v in r["rss_split_kib"].items():
            print(f"  {k}: before {v['before']}, after warm-up {v['after_warmup']}, end {v['end']}, after the load {v['after_load']}")
        for k, v in heap.items():
            print(f"  malloc_stats {k}: {v}")
        print(f"fds: before {r['fds']['before']}, peak {r['fds']['peak']}, after {r['fds']['after']} "
              f"(TCP connections before {connections['before']}, after {connections['after']}); "
              f"threads: before {r['threads']['before']}, peak {r['threads']['peak']}, after {r['threads']['after']}")
        print("tasks (main runtime, session workers) and sessions: " + "; ".join(f"{k} {v['before']} / {v['peak']} / {v['after']}" for k, v in r["tasks"].items())
              + " (before / peak / after)")
        print(f"load average (1 min) during the run: mean {r['load_average_1m']['mean']}, max {r['load_average_1m']['max']}")
        print(f"transactions: {r['transactions']}")
        print(f"expected refusals: {r['expected_refusals']}; unexpected errors: {unexpected or 'none'}")
        for code in unexpected:
            print(f"  {code}: {load.examples[code]}")
        print(f"JSON: {OUT}")
        return 1 if unexpected else 0
    finally:
        if capgate is not None:
            # SIGTERM to capgate itself (under a wrapper too: a heap profiler writes its
            # report when capgate exits); the wrapper then ends on its own.
            try:
                os.kill(pid if pid else capgate.pid, 15)
            except ProcessLookupError:
                capgate.terminate()
            try:
                capgate.wait(120 if CAPGATE_WRAP else 10)
            except subprocess.TimeoutExpired:
                capgate.kill()
        try:
            sites(env, "down")
        except subprocess.CalledProcessError:
            pass
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
