#!/usr/bin/env python3
"""CPU cost of content analysis per channel: one switch channel receiving the 1080p H.264 clip
(testdata/cqa_hd_h264.ts, 25 fps, one keyframe per second, AAC stereo) looped in real time,
with the rules blank-picture, frozen-video and silent-audio (one analysed keyframe per
second, all audio decoded) — and, in the same run, the same channel without rules as the
baseline.

Reported per run, from /proc over the measured span (after a warm-up):
  gateway  CPU of the whole `hitless run` process (utime + stime), % of one core
  worker   CPU of the channel's analysis thread (`cqa-CHANNEL`), % of one core
The cost of analysis is the worker's CPU plus the difference of the channel thread
(the tap on the packet path), i.e. gateway(with rules) - gateway(without).

Usage: scripts/bench-cqa-cpu.py [--seconds 30] [--warmup 5] [--no-build]
Python 3 standard library only; Linux; loopback only (127.0.5.9, ports 15500-15502,
http 19500). Every process it starts is stopped by PID; every loop is bounded.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "hitless")
CLIP = os.path.join(ROOT, "testdata", "cqa_hd_h264.ts")
IP = "127.0.5.9"
TICK = os.sysconf("SC_CLK_TCK")

RULES = """
  [[channel.rule]]
  condition = "blank-picture"
  sample_duration_s = 1
  samples = 2
  threshold = 2

  [[channel.rule]]
  condition = "frozen-video"
  sample_duration_s = 1
  samples = 2
  threshold = 2

  [[channel.rule]]
  condition = "silent-audio"
  sample_duration_s = 1
  samples = 2
  threshold = 2
"""


def config(rules):
    return f"""
[node]
name = "cqa-cpu"
http_listen = "{IP}:19500"

[[channel]]
name = "hd"
mode = "switch"
{rules}

  [[channel.source]]
  name = "a"
  url = "udp://{IP}:15500"
  role = "preferred"

  [[channel.output]]
  url = "udp://{IP}:15502"
"""


def cpu_ticks(path):
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def worker_tid(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip().startswith("cqa-"):
                return tid
    return None


def run(rules, seconds, warmup):
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "cqa.toml")
        with open(cfg, "w") as f:
            f.write(config(rules))
        gw = subprocess.Popen([BIN, "run", "--config", cfg],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        send = subprocess.Popen([BIN, "send", CLIP, "--to", f"udp://{IP}:15500",
                                 "--duration", str(seconds + warmup + 2)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(warmup)
            tid = worker_tid(gw.pid) if rules else None
            g0 = cpu_ticks(f"/proc/{gw.pid}/stat")
            w0 = cpu_ticks(f"/proc/{gw.pid}/task/{tid}/stat") if tid else 0
            t0 = time.monotonic()
            time.sleep(seconds)
            g1 = cpu_ticks(f"/proc/{gw.pid}/stat")
            w1 = cpu_ticks(f"/proc/{gw.pid}/task/{tid}/stat") if tid else 0
            span = time.monotonic() - t0
        finally:
            for p in (send, gw):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return (100.0 * (g1 - g0) / TICK / span, 100.0 * (w1 - w0) / TICK / span if tid else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "hitless"], cwd=ROOT, check=True)
    base, _ = run("", a.seconds, a.warmup)
    with_rules, worker = run(RULES, a.seconds, a.warmup)
    print(f"clip: {os.path.relpath(CLIP, ROOT)} (1920x1080 H.264 High, 1 keyframe/s, AAC), "
          f"{a.seconds:.0f} s measured after {a.warmup:.0f} s warm-up")
    print(f"gateway without content rules: {base:5.2f} % of one core")
    print(f"gateway with the three rules:  {with_rules:5.2f} % of one core")
    print(f"  of which the analysis worker: {worker:5.2f} % of one core")
    print(f"cost of content analysis per channel: {with_rules - base:5.2f} % of one core "
          f"(target <= 5 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
