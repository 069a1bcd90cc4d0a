#!/usr/bin/env python3
"""Loopback benchmark: `hitless send` -> forwarder -> `hitless recv` at rising bitrates.

Two forwarders are measured in the same run, interleaved rate by rate so that both see the
same machine noise:

  gateway  `hitless run` with one smpte-2022-7 channel (two rtp sources, one rtp output)
  relay    `examples/relay.rs`: the minimal recvmmsg/sendmmsg first-copy relay

For each step the sender sends the same RTP stream to both legs at --bitrate for --seconds;
the step is loss-free when `hitless recv` got every datagram the sender sent exactly once.
The forwarder's CPU time (utime + stime from /proc/PID/stat, all threads) is sampled just
before the send starts and just after it ends, and divided by the datagrams it forwarded.

Prints a table and a summary: highest loss-free rate of each, CPU seconds per million
datagrams, and the gateway/relay ratios (targets: rate >= 0.9x, CPU/packet <= 1.5x).

Usage: scripts/bench-loopback.py [--rates 50,100,200] [--seconds 5] [--no-build]
Python 3 standard library only; Linux (reads /proc). Loopback addresses only.
"""

import argparse
import atexit
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HITLESS = ROOT / "target/release/hitless"
RELAY = ROOT / "target/release/examples/relay"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_RATES = [50, 100, 200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000]

# Every process this script started and has not reaped: killed by PID on exit.
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


def start(cmd, stdout, stderr):
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    CHILDREN[proc.pid] = proc
    return proc


def reap(proc, timeout):
    """Wait for `proc` (bounded); kill it if it overstays. Returns its rusage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            CHILDREN.pop(proc.pid, None)
            return ru
        time.sleep(0.02)
    proc.kill()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    CHILDREN.pop(proc.pid, None)
    return ru


def wait_for_line(path, needle, proc, timeout):
    """Wait (bounded) until the log file at `path` contains `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[0]} not ready ({needle!r}); see {path}")


def cpu_seconds(pid):
    """(user, system) CPU seconds of every thread of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state): utime is 14, stime 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of `pid` so far (a
    forwarder that sleeps and wakes per small batch pays for it in the kernel)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def udp_drops(ports):
    """Datagrams the kernel dropped on each local UDP port (full receive buffer), from
    /proc/net/udp: tells a forwarder that fell behind from a receiver that did."""
    drops = dict.fromkeys(ports, 0)
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            port = int(cols[1].split(":")[1], 16)
            if port in drops:
                drops[port] += int(cols[-1])
    return drops


def gateway_config(tmp, ports, rate_mbps):
    a, b, out, http = ports
    # Merge buffer sized for the step's rate with headroom, as an operator would.
    max_mbps = min(10000, max(100, int(rate_mbps * 1.5)))
    text = f"""[node]
name = "bench"
http_listen = "127.0.0.1:{http}"

[[channel]]
name = "bench"
mode = "smpte-2022-7"
max_bitrate_mbps = {max_mbps}

  [[channel.source]]
  name = "a"
  url = "rtp://127.0.0.1:{a}"
  role = "preferred"

  [[channel.source]]
  name = "b"
  url = "rtp://127.0.0.1:{b}"
  role = "non-preferred"

  [[channel.output]]
  url = "rtp://127.0.0.1:{out}"
"""
    path = tmp / f"gateway-{rate_mbps}.toml"
    path.write_text(text)
    r = subprocess.run(
        [HITLESS, "check-config", path], capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0:
        raise RuntimeError(f"check-config failed:\n{r.stdout}{r.stderr}")
    return path


def start_forwarder(kind, tmp, ports, rate_mbps, step):
    a, b, out, _ = ports
    log = tmp / f"{kind}-{rate_mbps}-{step}.log"
    res = tmp / f"{kind}-{rate_mbps}-{step}.out"
    if kind == "gateway":
        cfg = gateway_config(tmp, ports, rate_mbps)
        cmd, ready = [HITLESS, "run", "--config", cfg], "hitless ready"
    else:
        cmd = [RELAY, "--listen", f"127.0.0.1:{a}", "--listen", f"127.0.0.1:{b}"]
        cmd += ["--to", f"127.0.0.1:{out}"]
        ready = "relay ready"
    with open(log, "w") as lf, open(res, "w") as rf:
        proc = start([str(c) for c in cmd], rf, lf)
    wait_for_line(log, ready, proc, 15)
    return proc, log, res


def run_step(kind, rate_mbps, args, tmp, step):
    ports = (args.base_port, args.base_port + 2, args.base_port + 4, args.base_port + 6)
    a, b, out, _ = ports
    fwd, fwd_log, _ = start_forwarder(kind, tmp, ports, rate_mbps, step)
    recv_json = tmp / f"recv-{kind}-{rate_mbps}-{step}.json"
    recv_log = tmp / f"recv-{kind}-{rate_mbps}-{step}.log"
    send_report = tmp / f"send-{kind}-{rate_mbps}-{step}.json"
    send_log = tmp / f"send-{kind}-{rate_mbps}-{step}.log"
    try:
        with open(recv_json, "w") as jf, open(recv_log, "w") as lf:
            recv = start(
                [
                    str(HITLESS), "recv", f"rtp://127.0.0.1:{out}", "--out", "/dev/null",
                    "--json", "--idle", "2", "--duration", str(args.seconds + 30),
                ],
                jf,
                lf,
            )
        wait_for_line(recv_log, "receiving on", recv, 15)
        time.sleep(0.2)
        u0, s0 = cpu_seconds(fwd.pid)
        cs0 = context_switches(fwd.pid)
        t0 = time.monotonic()
        with open(send_log, "w") as lf:
            send = start(
                [
                    str(HITLESS), "send", str(args.file),
                    "--to", f"rtp://127.0.0.1:{a}", "--to", f"rtp://127.0.0.1:{b}",
                    "--bitrate", f"{rate_mbps}M", "--duration", str(args.seconds),
                    "--report", str(send_report),
                ],
                subprocess.DEVNULL,
                lf,
            )
            send_ru = reap(send, args.seconds + 30)
        wall = time.monotonic() - t0
        # Let the forwarder drain its socket buffers (milliseconds), then sample.
        time.sleep(0.3)
        u1, s1 = cpu_seconds(fwd.pid)
        drops = udp_drops((a, b, out))
        ctxsw = context_switches(fwd.pid) - cs0
        recv_ru = reap(recv, 40)
        if send.returncode != 0:
            raise RuntimeError(f"hitless send failed; see {send_log}")
        if recv.returncode != 0:
            raise RuntimeError(f"hitless recv failed; see {recv_log}")
    finally:
        if fwd.poll() is None:
            fwd.send_signal(signal.SIGTERM)
        reap(fwd, 10)

    sent = json.loads(send_report.read_text())
    got = json.loads(recv_json.read_text())
    total = sent["total_datagrams"]
    legs_in = sum(leg["datagrams_sent"] for leg in sent["legs"])
    rtp = got.get("rtp") or {}
    distinct = rtp.get("received", 0)
    lost = total - distinct
    dups = rtp.get("duplicates", 0)
    achieved = sum(leg["bytes_sent"] for leg in sent["legs"]) / len(sent["legs"])
    achieved = achieved * 8 / sent["elapsed_s"] / 1e6 if sent["elapsed_s"] > 0 else 0.0
    cpu_u, cpu_s = u1 - u0, s1 - s0
    cpu = cpu_u + cpu_s
    return {
        "forwarder": kind,
        "rate_mbps": rate_mbps,
        "step": step,
        "sent": total,
        "in": legs_in,
        "received": got["datagrams"],
        "lost": lost,
        "duplicates": dups,
        "out_of_order": rtp.get("out_of_order", 0),
        # Kernel drops on the forwarder's two input sockets and on the receiver's socket.
        "drops_in": drops[a] + drops[b],
        "drops_out": drops[out],
        "loss_free": lost == 0 and dups == 0 and got["datagrams"] == total,
        "wire_mbps_per_leg": achieved,
        "send_wall_s": wall,
        "cpu_user_s": cpu_u,
        "cpu_sys_s": cpu_s,
        "cpu_s": cpu,
        "cpu_s_per_mpkt_out": cpu / got["datagrams"] * 1e6 if got["datagrams"] else None,
        "cpu_s_per_mpkt_in": cpu / legs_in * 1e6 if legs_in else None,
        "context_switches": ctxsw,
        "ctxsw_per_kpkt_out": ctxsw / got["datagrams"] * 1e3 if got["datagrams"] else None,
        "sender_cpu_s": send_ru.ru_utime + send_ru.ru_stime,
        "recv_cpu_s": recv_ru.ru_utime + recv_ru.ru_stime,
    }


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_row(r):
    print(
        f"{r['forwarder']:<8} {r['rate_mbps']:>6} {fmt(r['wire_mbps_per_leg'], '8.1f')} "
        f"{r['in']:>9} {r['received']:>9} {r['lost']:>7} {r['duplicates']:>5} "
        f"{'yes' if r['loss_free'] else 'NO':>4} {r['drops_in']:>7} {r['drops_out']:>7} {r['cpu_user_s']:>6.2f} {r['cpu_sys_s']:>6.2f} "
        f"{fmt(r['cpu_s_per_mpkt_out'], '9.2f')} {fmt(r['cpu_s_per_mpkt_in'], '9.2f')} "
        f"{fmt(r['ctxsw_per_kpkt_out'], '9.1f')} "
        f"{r['sender_cpu_s']:>6.2f} {r['recv_cpu_s']:>6.2f}",
        flush=True,
    )


HEADER = (
    f"{'fwd':<8} {'Mbit/s':>6} {'wire/leg':>8} {'dgrams in':>9} {'recv':>9} {'lost':>7} "
    f"{'dups':>5} {'ok':>4} {'drop in':>7} {'drop out':>7} {'usr s':>6} {'sys s':>6} {'s/Mpkt out':>9} {'s/Mpkt in':>9} "
    f"{'cs/kpkt':>9} "
    f"{'send s':>6} {'recv s':>6}"
)


def machine_info():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def sysctl(name):
        try:
            return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
        except OSError:
            return "?"

    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": model,
        "loadavg_at_start": os.getloadavg(),
        "rmem_max": sysctl("net.core.rmem_max"),
        "wmem_max": sysctl("net.core.wmem_max"),
        "git": rev,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", help="comma-separated Mbit/s (default: rising list up to 3000)")
    p.add_argument("--seconds", type=float, default=5.0, help="send time per step (default 5)")
    p.add_argument("--forwarders", default="gateway,relay", help="subset of gateway,relay")
    p.add_argument("--file", default=str(ROOT / "testdata/h264_aac.ts"), help="TS file to send")
    p.add_argument("--base-port", type=int, default=21000, help="first of 4 loopback ports")
    p.add_argument(
        "--retries", type=int, default=1,
        help="re-run a lossy step this many times before calling the rate lossy (default 1)",
    )
    p.add_argument("--keep-going", action="store_true", help="do not stop climbing at the first lossy rate")
    p.add_argument("--no-build", action="store_true", help="skip cargo build --release")
    p.add_argument(
        "--bin-dir",
        help="take hitless and relay from this directory (copied there beforehand), not from "
        "target/release: a shared target dir may be rebuilt by someone else mid-run; implies --no-build",
    )
    p.add_argument("--json", help="also write every step's figures to this JSON file")
    args = p.parse_args()

    rates = [int(r) for r in args.rates.split(",")] if args.rates else DEFAULT_RATES
    kinds = [k.strip() for k in args.forwarders.split(",") if k.strip()]
    if not rates or any(r <= 0 for r in rates) or not set(kinds) <= {"gateway", "relay"} or not kinds:
        p.error("bad --rates or --forwarders")
    if not 0 < args.seconds <= 600 or not 0 <= args.retries <= 5:
        p.error("--seconds must be in (0, 600] and --retries in 0..=5")

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    global HITLESS, RELAY
    if args.bin_dir:
        HITLESS, RELAY = Path(args.bin_dir) / "hitless", Path(args.bin_dir) / "relay"
    elif not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "--bins", "--examples"], cwd=ROOT, check=True, timeout=3600
        )
    for b in (HITLESS, RELAY):
        if not b.exists():
            sys.exit(f"{b} is missing: build with cargo build --release --bins --examples")

    info = machine_info()
    print(
        f"machine: nproc={info['nproc']} kernel={info['kernel']} cpu={info['cpu']!r} "
        f"load={info['loadavg_at_start'][0]:.2f} rmem_max={info['rmem_max']} git={info['git']}"
    )
    print(f"file={args.file} seconds/step={args.seconds} rates={rates} retries={args.retries}")
    print(HEADER, flush=True)

    results = []
    best = {k: None for k in kinds}
    climbing = set(kinds)
    with tempfile.TemporaryDirectory(prefix="hitless-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for rate in rates:
            if not climbing:
                break
            # Interleave: both forwarders measured at this rate before the next rate.
            for kind in kinds:
                if kind not in climbing:
                    continue
                for attempt in range(args.retries + 1):
                    r = run_step(kind, rate, args, tmp, attempt)
                    r["attempt"] = attempt
                    results.append(r)
                    print_row(r)
                    if r["loss_free"]:
                        break
                if r["loss_free"]:
                    best[kind] = rate
                elif not args.keep_going:
                    climbing.discard(kind)

    def clean(kind, rate):
        rows = [r for r in results if r["forwarder"] == kind and r["rate_mbps"] == rate and r["loss_free"]]
        return rows[-1] if rows else None

    def cpu_at(kind, rate):
        r = clean(kind, rate) if rate is not None else None
        return r["cpu_s_per_mpkt_out"] if r else None

    print()
    print("summary (CPU seconds per million datagrams forwarded, at the highest loss-free rate):")
    for k in kinds:
        print(f"  {k:<8} highest loss-free {fmt(best[k], '')} Mbit/s, {fmt(cpu_at(k, best[k]), '.2f')} CPU s/Mpkt")
    summary = {"machine": info, "args": vars(args), "best_mbps": best, "steps": results}
    if set(kinds) == {"gateway", "relay"}:
        g, rl = best["gateway"], best["relay"]
        rate_ratio = g / rl if g and rl else None
        # CPU per packet compared at the same rate: the highest both forwarded without loss.
        common = [rate for rate in rates if clean("gateway", rate) and clean("relay", rate)]
        at = max(common) if common else None
        cg, cr = (cpu_at("gateway", at), cpu_at("relay", at)) if at else (None, None)
        cpu_ratio = cg / cr if cg and cr else None
        per_rate = []
        for rate in common:
            a_, b_ = cpu_at("gateway", rate), cpu_at("relay", rate)
            if a_ and b_:
                per_rate.append((rate, a_ / b_))
        print(f"  ratio gateway/relay loss-free rate: {fmt(rate_ratio, '.2f')} (target >= 0.90)")
        print(
            f"  ratio gateway/relay CPU per packet at {fmt(at, '')} Mbit/s: {fmt(cpu_ratio, '.2f')} "
            f"({fmt(cg, '.2f')} / {fmt(cr, '.2f')} s/Mpkt; target <= 1.50)"
        )
        if per_rate:
            print("  CPU ratio at each common rate: " + ", ".join(f"{r}: {x:.2f}" for r, x in per_rate))
        summary.update(rate_ratio=rate_ratio, cpu_ratio=cpu_ratio, cpu_ratio_at_mbps=at, cpu_ratio_by_rate=per_rate)
    print(f"  machine: nproc={info['nproc']} uname -r={info['kernel']}; sender, receiver and forwarder share the CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
