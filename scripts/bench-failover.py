#!/usr/bin/env python3
"""Failover-gap benchmark: how long the output of a switch channel goes silent when the
active source stops, and how long after the source returns the channel switches back.

One `hitless run` gateway with one switch channel per offline window (default 50 ms, plus
500 ms and 1000 ms, the timeouts of the reference points AWS MediaConnect failover and
GStreamer fallbackswitch, measured on the same gateway in the same run). Each channel has
sources a (preferred, the H.264 clip) and b (non-preferred, the MPEG-2 clip), a file slate,
and one UDP output that this script reads itself.

One `hitless send` for a sends to every channel's a port and to a mirror socket read by this
script, with the same outage windows on every leg (`outage=T1+D,T2+D,...`): the mirror
gives the wall-clock moments a stopped and resumed. One `hitless send` for b sends to every
channel's b port without outages. All arrival times are time.monotonic() in one thread.

Per trial and channel:
  gap          largest inter-arrival gap of the output datagrams in
               [a stopped - 20 ms, a stopped + window + 400 ms] (own capture)
  log gap      gap_ms of the gateway's "first packet after switch" line (cross-check)
  switch-back  first output datagram whose content is a's clip after a resumed, minus the
               moment a resumed (content: TS payloads matched against each clip); the
               "switched ... to=a reason=auto-switch-back" log timestamp as cross-check

Usage: scripts/bench-failover.py [--trials 24] [--windows 50,500,1000] [--clear-ms 500]
                                 [--outage-ms 1500] [--no-build]
Python 3 standard library only; Linux; loopback only (ports 15000-15099, http 19100).
"""

import argparse
import atexit
import datetime
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HITLESS = ROOT / "target/release/hitless"
CLIP_A = ROOT / "testdata/h264_aac.ts"
CLIP_B = ROOT / "testdata/mpeg2_mp2.ts"
SLATE = ROOT / "testdata/mpeg2_mp2.ts"
IP = "127.0.0.1"
HTTP = f"{IP}:19100"
MIRROR_PORT = 15090
FIRST_OUTAGE_MS = 4000  # a is on air (startup / switch-back done) well before this

CHILDREN = {}


def cleanup():
    for pid, proc in list(CHILDREN.items()):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        CHILDREN.pop(pid, None)


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


def start(cmd, **kw):
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    CHILDREN[proc.pid] = proc
    return proc


def ports(k):
    """Ports of channel k: (a, b, output)."""
    base = 15000 + 20 * k
    return base, base + 2, base + 10


def write_config(path, windows, clear_ms):
    parts = [f'[node]\nname = "bench-failover"\nhttp_listen = "{HTTP}"\n']
    for k, w in enumerate(windows):
        pa, pb, po = ports(k)
        parts.append(
            f"""
[[channel]]
name = "w{w}"
mode = "switch"
offline_window_ms = {w}
clear_time_ms = {clear_ms}
# every trial is a failure of a: keep the anti-flapping hold-down out of the measurement
holddown_ms = 0

  [[channel.source]]
  name = "a"
  url = "udp://{IP}:{pa}"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "udp://{IP}:{pb}"
  role = "non-preferred"

  [[channel.source]]
  name = "slate"
  url = "file://{SLATE}"
  role = "slate"

  [[channel.output]]
  url = "udp://{IP}:{po}"
"""
        )
    path.write_text("".join(parts))


def bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((IP, port))
    s.setblocking(False)
    return s


class Capture(threading.Thread):
    """One thread, one poll loop over every socket: (monotonic time, datagram) per socket."""

    def __init__(self, socks):
        super().__init__(daemon=True)
        self.socks = socks  # name -> socket
        self.got = {name: [] for name in socks}
        self.stop = threading.Event()

    def run(self):
        poller = select.poll()
        by_fd = {}
        for name, s in self.socks.items():
            poller.register(s, select.POLLIN)
            by_fd[s.fileno()] = name
        while not self.stop.is_set():
            for fd, _ in poller.poll(100):
                name = by_fd[fd]
                s = self.socks[name]
                while True:
                    try:
                        d = s.recv(2048)
                    except BlockingIOError:
                        break
                    t = time.monotonic()
                    self.got[name].append((t, d if name != "mirror" else b""))


class LogReader(threading.Thread):
    """The gateway's stderr: (monotonic arrival, monotonic from the log's own timestamp, line)."""

    TS = re.compile(r"^\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")

    def __init__(self, stream, wall_minus_mono):
        super().__init__(daemon=True)
        self.stream = stream
        self.off = wall_minus_mono
        self.lines = []
        self.ready = threading.Event()

    def run(self):
        for raw in self.stream:
            t = time.monotonic()
            line = raw.decode(errors="replace").rstrip()
            m = self.TS.match(line)
            tl = None
            if m:
                s = m.group(1)
                if "." in s:
                    head, frac = s.split(".")
                    s = head + "." + (frac + "000000")[:6]
                    fmt = "%Y-%m-%dT%H:%M:%S.%f"
                else:
                    fmt = "%Y-%m-%dT%H:%M:%S"
                wall = datetime.datetime.strptime(s, fmt).replace(
                    tzinfo=datetime.timezone.utc
                ).timestamp()
                tl = wall - self.off
            self.lines.append((t, tl, line))
            if "hitless ready" in line:
                self.ready.set()


def clip_payloads(path):
    """Payload bytes (after the 4-byte header) of the PID 256/257 packets of a clip."""
    d = path.read_bytes()
    out = set()
    for i in range(0, len(d) - 187, 188):
        pid = ((d[i + 1] & 0x1F) << 8) | d[i + 2]
        if pid in (256, 257):
            out.add(d[i + 4 : i + 188])
    return out


def classify(dgram, only_a, only_b):
    na = nb = 0
    for i in range(0, len(dgram) - 187, 188):
        p = dgram[i + 4 : i + 188]
        if p in only_a:
            na += 1
        elif p in only_b:
            nb += 1
    return "a" if na > nb else "b" if nb > na else None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def field(line, key):
    m = re.search(rf'{key}="?([^"\s]+)"?', line)
    return m.group(1) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--windows", default="50,500,1000", help="offline_window_ms per channel; the first is the one under test")
    ap.add_argument("--clear-ms", type=int, default=500)
    ap.add_argument("--outage-ms", type=int, default=1500, help="a's silence per trial (wall ms; > every window)")
    ap.add_argument("--period-ms", type=int, default=0, help="trial spacing (default outage + clear + 1500)")
    ap.add_argument("--pacing", choices=["cbr", "pcr"], default="cbr",
                    help="cbr: --bitrate 2M (a) / 1.5M (b), no gaps in the sources; pcr: paced by the clips' PCRs, "
                         "which leaves gaps of 50-150 ms in the sources (a 50 ms window then sees them as outages)")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    assert args.trials >= 1 and all(0 < w < args.outage_ms for w in windows)
    period = args.period_ms or args.outage_ms + args.clear_ms + 1500

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True, timeout=1800)

    tmp = tempfile.TemporaryDirectory(prefix="bench-failover-")
    cfg = Path(tmp.name) / "failover.toml"
    write_config(cfg, windows, args.clear_ms)

    socks = {"mirror": bind(MIRROR_PORT)}
    for k, w in enumerate(windows):
        socks[f"w{w}"] = bind(ports(k)[2])
    cap = Capture(socks)
    cap.start()

    off = time.time() - time.monotonic()
    env = dict(os.environ, HITLESS_LOG="info", NO_COLOR="1")
    gw = start([str(HITLESS), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    log = LogReader(gw.stderr, off)
    log.start()
    if not log.ready.wait(15):
        sys.exit("gateway not ready after 15 s:\n" + "\n".join(l for _, _, l in log.lines))

    outages = [(FIRST_OUTAGE_MS + i * period, args.outage_ms) for i in range(args.trials)]
    duration_s = (FIRST_OUTAGE_MS + args.trials * period) / 1000 + 1
    out_q = ",".join(f"{s}+{d}" for s, d in outages)
    b_cmd = [str(HITLESS), "send", str(CLIP_B), "--duration", f"{duration_s + 2}"]
    a_cmd = [str(HITLESS), "send", str(CLIP_A), "--duration", f"{duration_s}"]
    if args.pacing == "cbr":
        a_cmd += ["--bitrate", "2M"]
        b_cmd += ["--bitrate", "1.5M"]
    a_cmd += ["--to", f"udp://{IP}:{MIRROR_PORT}?outage={out_q}"]
    for k, _ in enumerate(windows):
        pa, pb, _ = ports(k)
        a_cmd += ["--to", f"udp://{IP}:{pa}?outage={out_q}"]
        b_cmd += ["--to", f"udp://{IP}:{pb}"]
    print(f"{args.trials} trials, outage {args.outage_ms} ms every {period} ms, "
          f"windows {windows} ms, clear_time {args.clear_ms} ms: about {duration_s + 3:.0f} s", flush=True)
    b = start(b_cmd, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    a = start(a_cmd, stdout=subprocess.DEVNULL)
    for p in (a, b):
        try:
            p.wait(timeout=duration_s + 30)
        except subprocess.TimeoutExpired:
            sys.exit(f"sender {p.pid} overran")
        CHILDREN.pop(p.pid, None)
        if p.returncode != 0:
            sys.exit(f"sender {p.args} failed: {p.returncode}")
    time.sleep(0.5)
    cap.stop.set()
    cap.join(2)
    cleanup()
    log.join(2)

    # a's stop/resume moments from the mirror: silences longer than half the outage.
    mt = [t for t, _ in cap.got["mirror"]]
    trials = [(mt[i - 1], mt[i]) for i in range(1, len(mt)) if mt[i] - mt[i - 1] > args.outage_ms / 2000]
    if len(trials) != args.trials:
        print(f"warning: {len(trials)} outages seen on the mirror, {args.trials} scheduled")

    only_a, only_b = clip_payloads(CLIP_A), clip_payloads(CLIP_B)
    only_a, only_b = only_a - only_b, only_b - only_a
    lines = log.lines
    results = {}
    odd = []
    for k, w in enumerate(windows):
        ch = f"w{w}"
        out = cap.got[ch]
        ot = [t for t, _ in out]
        sw = [(tl, l) for _, tl, l in lines if "switched" in l and f"channel={ch} " in l + " "]
        first = [(tl, float(field(l, "gap_ms"))) for _, tl, l in lines if "first packet after switch" in l and f"channel={ch} " in l + " "]
        gaps, log_gaps, back, back_log, fail_lat, back_lastb, back_gap, media_gaps = [], [], [], [], [], [], [], []
        excluded = []
        down = [(tl, l) for _, tl, l in lines if "source unhealthy" in l and f"channel={ch} " in l + " "]
        # offline events that are not the scheduled outages of a: the sources (or the machine) stalled
        spurious = [(tl, field(l, "source")) for tl, l in down
                    if not any(st < tl < rs + 0.05 for st, rs in trials) or field(l, "source") != "a"]
        for stop, resume in trials:
            before = [c for c in (classify(d, only_a, only_b) for t, d in out if stop - 0.2 <= t <= stop) if c]
            on_a = bool(before) and before[-1] == "a"
            stalls = [src for tl, src in spurious if stop - 1.0 <= tl <= stop + w / 1000 + 0.4]
            if not on_a or stalls:
                excluded.append(f"{stop - trials[0][0]:.1f}s: " + ("not on a before the outage" if not on_a else "")
                                + (f" spurious offline of {sorted(set(stalls))} around it" if stalls else ""))
                continue
            lo, hi = stop - 0.020, stop + w / 1000 + 0.400
            seg = [t for t in ot if lo <= t <= hi]
            g = max((y - x for x, y in zip(seg, seg[1:])), default=float("nan")) * 1000
            gaps.append(g)
            # media gap: last datagram carrying a's clip to the first carrying b's clip (the
            # splicer drops the new source's packets of each PID until its next payload unit
            # start; the first datagrams after a switch may be re-sent PAT/PMT only)
            la = [t for t, d in out if lo - 0.2 <= t <= stop + 0.001 and classify(d, only_a, only_b) == "a"]
            fb = next((t for t, d in out if stop < t <= hi + 0.2 and classify(d, only_a, only_b) == "b"), None)
            if la and fb is not None:
                media_gaps.append((fb - la[-1]) * 1000)
            # the failover switch line of this trial and the first-packet line after it
            fo = [tl for tl, l in sw if stop < tl < resume and 'to="b"' in l and 'reason="offline"' in l]
            if fo:
                fail_lat.append((fo[0] - stop) * 1000)
                fp = [gm for tl, gm in first if tl >= fo[0]]
                if fp:
                    log_gaps.append(fp[0])
            else:
                odd.append(f"{ch}: no offline switch to b for the outage at {stop - trials[0][0]:.1f} s")
            nxt = resume + period / 1000
            bl = [tl for tl, l in sw if resume <= tl < nxt and 'to="a"' in l]
            if bl:
                back_log.append((bl[0] - resume) * 1000)
                if 'reason="auto-switch-back"' not in [l for tl, l in sw if tl == bl[0]][0]:
                    odd.append(f"{ch}: switch back to a with another reason")
            fa = next((t for t, d in out if resume <= t < nxt and classify(d, only_a, only_b) == "a"), None)
            seg = [t for t in ot if resume + (args.clear_ms - 100) / 1000 <= t <= resume + (args.clear_ms + 200) / 1000]
            back_gap.append(max((y - x for x, y in zip(seg, seg[1:])), default=float("nan")) * 1000)
            lb = [t for t, d in out if resume <= t < (fa or nxt) and classify(d, only_a, only_b) == "b"]
            if lb:
                back_lastb.append((lb[-1] - resume) * 1000)
            if fa is not None:
                back.append((fa - resume) * 1000)
            else:
                odd.append(f"{ch}: no output of a after the outage ending at {resume - trials[0][0]:.1f} s")
        big = [g for g in gaps if g > 1.5 * w + 20]
        if big:
            odd.append(f"{ch}: gaps much larger than the window: {[round(g, 1) for g in big]}")
        results[w] = dict(gaps=gaps, log_gaps=log_gaps, back=back, back_log=back_log, fail_lat=fail_lat,
                          back_lastb=back_lastb, back_gap=back_gap, media_gaps=media_gaps,
                          excluded=excluded, spurious=spurious)

    print()
    print("per-trial gaps (ms) of", f"w{windows[0]}:", " ".join(f"{g:.1f}" for g in results[windows[0]]["gaps"]))
    print("per-trial switch-back (ms):", " ".join(f"{x:.1f}" for x in results[windows[0]]["back"]))
    print()
    hdr = ("| configuration | timeout (ms) | trials | gap median | gap p90 | gap max | log gap_ms median | "
           "switch-back after a returns: median | max |")
    print(hdr)
    print("|" + "---|" * 9)
    refs = {500: "hitless at AWS MediaConnect's failover timeout", 1000: "hitless at GStreamer fallbackswitch's timeout"}
    for w in windows:
        r = results[w]
        name = refs.get(w, "hitless offline_window_ms") if w != windows[0] else "hitless offline_window_ms (under test)"
        print(f"| {name} | {w} | {len(r['gaps'])} | {statistics.median(r['gaps']):.1f} | {pct(r['gaps'], .9):.1f} | "
              f"{max(r['gaps']):.1f} | {statistics.median(r['log_gaps']) if r['log_gaps'] else float('nan'):.1f} | "
              f"{statistics.median(r['back']) if r['back'] else float('nan'):.1f} | {max(r['back'], default=float('nan')):.1f} |")
    print("| AWS MediaConnect router input failover (documented) | 500 | - | >= 500 | - | - | - | \"as soon as data returns\" | - |")
    print("| GStreamer fallbackswitch, default `timeout` | 1000 | - | >= 1000 | - | - | - | auto-switch on next keyframe | - |")
    print()
    for w in windows:
        r = results[w]
        if r["back_log"]:
            print(f"w{w}: switch-back from the log: median {statistics.median(r['back_log']):.1f} ms, "
                  f"max {max(r['back_log']):.1f} ms (clear_time {args.clear_ms}); last datagram of b on the output "
                  f"{statistics.median(r['back_lastb']) if r['back_lastb'] else float('nan'):.1f} ms (median) after a returned; "
                  f"largest output gap around the switch-back {statistics.median(r['back_gap']):.1f} ms median, "
                  f"{max(r['back_gap']):.1f} ms max; offline switch logged {statistics.median(r['fail_lat']):.1f} ms (median) after a's last datagram")
    for w in windows:
        mg = results[w]["media_gaps"]
        if mg:
            print(f"w{w}: media gap (last datagram of a's clip -> first of b's clip): median {statistics.median(mg):.1f}, "
                  f"p90 {pct(mg, .9):.1f}, max {max(mg):.1f} ms over {len(mg)} trials")
    w0 = results[windows[0]]
    ok_gap = statistics.median(w0["gaps"]) <= windows[0] + 5
    print(f"\ngoal: median gap {statistics.median(w0['gaps']):.1f} ms <= {windows[0] + 5} ms over "
          f"{len(w0['gaps'])} trials: {'met' if ok_gap and len(w0['gaps']) >= 20 else 'NOT met'}")
    if w0["back"]:
        print(f"goal: switch-back {statistics.median(w0['back']):.1f} ms median vs clear_time {args.clear_ms} ms "
              f"(+{statistics.median(w0['back']) - args.clear_ms:.1f} ms)")
    print(f"machine: nproc {os.cpu_count()}, {platform.system()} {platform.release()}, python {platform.python_version()}")
    for w in windows:
        r = results[w]
        srcs = {}
        for _, src in r["spurious"]:
            srcs[src] = srcs.get(src, 0) + 1
        print(f"w{w}: {len(r['gaps'])} trials measured, {len(r['excluded'])} excluded; "
              f"offline events outside the scheduled outages: {srcs or 'none'}")
        t0 = trials[0][0] if trials else 0
        print("  at (s from the first outage):", [(round(tl - t0, 2), src) for tl, src in r["spurious"]])
        for e in r["excluded"]:
            print(f"  excluded {e}")
    for o in odd:
        print("odd:", o)
    warns = [l for _, _, l in lines if " WARN " in l and "switched" not in l]
    for l in warns[:10]:
        print("gateway:", l)


if __name__ == "__main__":
    main()
