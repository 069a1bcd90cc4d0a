#!/usr/bin/env python3
"""Cluster takeover benchmark: kill -9 the node that outputs a channel (and is manager), and
measure how long until its backup outputs the channel and becomes the new manager.

Two `hitless run` nodes on loopback with advert_interval_ms = 20:
  gw-a  score 200: manager, home of channels "hot" (hot_standby = true) and "cold"
        (hot_standby = false)
  gw-b  score 100: backup of both (hot: already receiving and merging, output muted)
One `hitless send` feeds both channels' two multicast legs; this script reads both outputs
itself (recvfrom: the sender's port tells gw-a's packets from gw-b's).

Per trial (fresh state directories): start both, wait until gw-a is manager and both
channels flow from gw-a, then SIGKILL gw-a at time K (time.time()) and record:
  hot gap      first output datagram of "hot" from gw-b  - K
  cold gap     first output datagram of "cold" from gw-b - K
  new manager  timestamp of gw-b's "cluster: this node is manager" log line - K
Medians (and min / max) over the trials. For comparison: keepalived's default VRRP
master-down is 3.6 s (advert 1 s, priority 100), Corosync's token timeout ~3 s.

Usage: scripts/bench-cluster.py [--trials 10] [--binary target/debug/hitless]
BENCH_DEBUG=1 prints gw-b's log for trials whose new-manager time exceeds 200 ms.
Python 3 standard library only; Linux; loopback only (127.0.7.x, groups 239.255.7.x).
"""

import argparse
import atexit
import datetime
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "testdata/mpeg2_mp2.ts"
CHILDREN = {}


def cleanup():
    for pid, proc in list(CHILDREN.items()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        CHILDREN.pop(pid, None)


def start(cmd, **kw):
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    CHILDREN[proc.pid] = proc
    return proc


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    CHILDREN.pop(proc.pid, None)


def channel(name, group, port):
    return f"""
[[channel]]
name = "{name}"
mode = "smpte-2022-7"
merge_window_ms = 50
leg_timeout_ms = 50

  [[channel.source]]
  name = "a"
  url = "rtp://239.255.7.{group}:5000?iface=127.0.0.1"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "rtp://239.255.7.{group + 1}:5000?iface=127.0.0.1"
  role = "non-preferred"

  [[channel.output]]
  url = "udp://127.0.7.200:{port}"
"""


SEED = (
    '\n  [[cluster.channel]]\n  name = "hot"\n  home = "gw-a"\n  backup = "gw-b"\n  hot_standby = true\n'
    '\n  [[cluster.channel]]\n  name = "cold"\n  home = "gw-a"\n  backup = "gw-b"\n  hot_standby = false\n'
    + channel("hot", 1, 6101)
    + channel("cold", 3, 6102)
)


def write_node(d, node, me, peer, score):
    nd = d / node
    nd.mkdir(parents=True, exist_ok=True)
    (d / "cluster.key").write_text("bench-cluster-shared-secret-0123456789\n")
    cfg = nd / "node.toml"
    cfg.write_text(
        f"""
[node]
name = "{node}"
http_listen = "127.0.7.{me}:9000"

[cluster]
node_id = "{node}"
listen = "127.0.7.{me}:7400"
peers = ["127.0.7.{peer}:7400"]
score = {score}
advert_interval_ms = 20
key_file = "../cluster.key"
{SEED}
"""
    )
    return cfg


def status(me):
    with urllib.request.urlopen(f"http://127.0.7.{me}:9000/api/v1/cluster", timeout=5) as r:
        return json.load(r)


def wait(what, pred, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


class Capture:
    """Arrival (time.time(), sender port) of every output datagram of one channel."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.7.200", port))
        self.sock.settimeout(0.05)
        self.events = []
        self.running = True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while self.running:
            try:
                _, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            self.events.append((time.time(), addr[1]))

    def close(self):
        self.running = False
        self.t.join()
        self.sock.close()


class LogWatcher:
    """Keeps a node's stderr lines (and reads them so the pipe never fills)."""

    def __init__(self, proc):
        self.lines = []
        self.t = threading.Thread(target=self.run, args=(proc,), daemon=True)
        self.t.start()

    def run(self, proc):
        for line in proc.stderr:
            self.lines.append(line)

    def timestamp(self, needle, after=0.0):
        """Time of the first line containing `needle` logged after `after`."""
        for line in list(self.lines):
            if needle in line:
                m = re.match(r"(\S+Z)", re.sub(r"\x1b\[[0-9;]*m", "", line))
                if m:
                    ts = m.group(1)
                    # 2026-12-02T17:43:50.447633Z -> aware datetime
                    dt = datetime.datetime.strptime(ts[:26], "%Y-%m-%dT%H:%M:%S.%f")
                    t = dt.replace(tzinfo=datetime.timezone.utc).timestamp()
                    if t > after:
                        return t
        return None


def trial(binary, k):
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        d = Path(tmp)
        ca = write_node(d, "gw-a", 1, 2, 200)
        cb = write_node(d, "gw-b", 2, 1, 100)
        caps = {"hot": Capture(6101), "cold": Capture(6102)}
        env = dict(os.environ, HITLESS_LOG="info", NO_COLOR="1")
        send = start(
            [binary, "send", str(CLIP), "--duration", "600"]
            + sum(
                [["--to", f"rtp://239.255.7.{g}:5000?iface=127.0.0.1&ttl=1"] for g in (1, 2, 3, 4)],
                [],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        a = start([binary, "run", "--config", str(ca)], stderr=subprocess.PIPE, text=True, env=env)
        b = start([binary, "run", "--config", str(cb)], stderr=subprocess.PIPE, text=True, env=env)
        logs_b = LogWatcher(b)
        LogWatcher(a)
        try:
            wait("gw-a manager", lambda: status(1)["role"] == "manager")
            # Start-up elections (gw-b may lead briefly if gw-a's first adverts are late)
            # are over once gw-b follows gw-a.
            wait("gw-b follows gw-a", lambda: status(2)["manager"] == "gw-a")
            wait(
                "channels on gw-a, hot standby on gw-b",
                lambda: status(1)["running_here"] == {"hot": "active", "cold": "active"}
                and status(2)["running_here"] == {"hot": "standby"},
            )
            t0 = time.time()
            wait(
                "output from gw-a",
                lambda: all(sum(1 for t, _ in c.events if t > t0) > 20 for c in caps.values()),
            )
            a_port = {n: c.events[-1][1] for n, c in caps.items()}
            killed = time.time()
            a.kill()
            a.wait()
            CHILDREN.pop(a.pid, None)
            wait(
                "output from gw-b",
                lambda: all(
                    any(t > killed and p != a_port[n] for t, p in c.events) for n, c in caps.items()
                ),
            )
            wait(
                "gw-b manager",
                lambda: logs_b.timestamp("this node is manager", killed) is not None,
            )
            res = {}
            for n, c in caps.items():
                first = next(t for t, p in c.events if t > killed and p != a_port[n])
                res[n] = (first - killed) * 1000
            res["manager"] = (logs_b.timestamp("this node is manager", killed) - killed) * 1000
            if res["manager"] > 200 and os.environ.get("BENCH_DEBUG"):
                print("   killed at", datetime.datetime.fromtimestamp(killed, datetime.timezone.utc).isoformat())
                for line in logs_b.lines:
                    if "listening" not in line and "output channel" not in line:
                        print("   gw-b:", line.rstrip())
            print(
                f"trial {k + 1}: hot {res['hot']:.1f} ms, cold {res['cold']:.1f} ms, "
                f"new manager {res['manager']:.1f} ms",
                flush=True,
            )
            return res
        finally:
            for p in (a, b, send):
                stop(p)
            for c in caps.values():
                c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--binary", default=str(ROOT / "target/debug/hitless"))
    args = ap.parse_args()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not Path(args.binary).exists():
        raise SystemExit(f"{args.binary} not found: cargo build first")
    results = [trial(args.binary, k) for k in range(args.trials)]
    print(f"\n{args.trials} trials, advert_interval_ms = 20 (gw-b master-down = "
          f"3 x 20 + (256-100) x 20/256 = 72.2 ms)")
    print(f"{'':<28}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}")
    for key, label in (
        ("hot", "takeover gap, hot standby"),
        ("cold", "takeover gap, cold"),
        ("manager", "new manager (new epoch)"),
    ):
        xs = sorted(r[key] for r in results)
        p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
        print(
            f"{label:<28}{statistics.median(xs):>8.1f}ms{p90:>8.1f}ms"
            f"{min(xs):>8.1f}ms{max(xs):>8.1f}ms"
        )
    print("reference: keepalived default master-down 3.6 s; Corosync token timeout ~3 s")


if __name__ == "__main__":
    main()
