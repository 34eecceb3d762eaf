#!/usr/bin/env python3
"""End-to-end benchmark: this daemon (each runtime) against tgt, same client, same machine.

Starts tgt-cli (one daemon per runtime) and tgtd, each on its own sparse 1 GiB file, then for
every workload runs the same client against each target in turn (A B A B ... for ROUNDS
rounds) and reports IOPS, MB/s and the daemon's CPU time per I/O (utime+stime from
/proc/PID/stat over the run), with the ratios ours/tgt. Called by scripts/bench-vs-tgt.sh.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
IQN_OURS = "iqn.2026-11.org.tgt-rs:bench"
IQN_TGT = "iqn.2026-11.org.tgt-rs:bench-tgt"

# (name, client, args). iscsi-perf: reads only; iscsi-load: the project's own generator.
WORKLOADS = [
    ("4k randread QD1", "load", ["--bs", "4096", "--qd", "1"]),
    ("4k randread QD32", "load", ["--bs", "4096", "--qd", "32"]),
    ("4k randread QD32 (iscsi-perf)", "perf", ["-r", "-m", "32", "-b", "8"]),
    ("4k randwrite QD1", "load", ["--bs", "4096", "--qd", "1", "--read-pct", "0"]),
    ("4k randwrite QD32", "load", ["--bs", "4096", "--qd", "32", "--read-pct", "0"]),
    ("4k 70/30 mix QD32", "load", ["--bs", "4096", "--qd", "32", "--read-pct", "70"]),
    ("128k seqread QD8", "load", ["--bs", "131072", "--qd", "8", "--seq"]),
    ("128k seqread QD8 (iscsi-perf)", "perf", ["-m", "8", "-b", "256"]),
    ("128k seqwrite QD8", "load", ["--bs", "131072", "--qd", "8", "--seq", "--read-pct", "0"]),
    ("4k randread 4x QD16", "load", ["--bs", "4096", "--qd", "16", "--sessions", "4"]),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on port {port}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


class Target:
    def __init__(self, name, pid, port, iqn, proc):
        self.name, self.pid, self.port, self.iqn, self.proc = name, pid, port, iqn, proc


def start_ours(binary, runtime, store, work, name=None):
    name = name or f"ours-{runtime}"
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d)
    img = os.path.join(d, "lun.img")
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    cfg = os.path.join(d, "t.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[daemon]\nlisten = ["127.0.0.1:{port}"]\nruntime = "{runtime}"\n\n'
            f'[[target]]\ntid = 1\nname = "{IQN_OURS}"\ninitiators = ["ALL"]\n\n'
            f'[[target.lun]]\nlun = 1\nbacking_store = "{img}"\nbstype = "{store}"\n'
        )
    log = open(os.path.join(d, "daemon.log"), "w")
    p = subprocess.Popen(
        [binary, "daemon", "--config", cfg, "--control", os.path.join(d, "control.sock")],
        stdout=log, stderr=subprocess.STDOUT)
    wait_port(port)
    return Target(name, p.pid, port, IQN_OURS, p)


def start_tgt(store, work):
    port = free_port()
    ctl = str(port % 1000 + 100)
    d = os.path.join(work, "tgt")
    os.makedirs(d)
    img = os.path.join(d, "lun.img")
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    log = open(os.path.join(d, "tgtd.log"), "w")
    p = subprocess.Popen(["tgtd", "-f", "-C", ctl, "--iscsi", f"portal=127.0.0.1:{port}"],
                         stdout=log, stderr=subprocess.STDOUT)
    wait_port(port)
    adm = ["tgtadm", "-C", ctl, "--lld", "iscsi"]
    subprocess.run(adm + ["--mode", "target", "--op", "new", "--tid", "1", "-T", IQN_TGT],
                   check=True)
    subprocess.run(adm + ["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                          "-E", store, "-b", img], check=True)
    subprocess.run(adm + ["--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL"],
                   check=True)
    return Target("tgt", p.pid, port, IQN_TGT, p)


def run_client(t, client, args, secs, load_bin):
    if client == "perf":
        cmd = ["iscsi-perf", *args, "-t", str(secs),
               f"iscsi://127.0.0.1:{t.port}/{t.iqn}/1"]
    else:
        cmd = [load_bin, "--portal", f"127.0.0.1:{t.port}", "--target", t.iqn,
               "--secs", str(secs), *args]
    c0 = cpu_ticks(t.pid)
    w0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    wall = time.time() - w0
    c1 = cpu_ticks(t.pid)
    text = out.stdout + out.stderr
    if client == "perf":
        m = re.findall(r"iops average (\d+) \((\d+) MB/s\)", text)
        if out.returncode != 0 or not m:
            return None, text
        iops = float(m[-1][0])
        mbps = iops * int(args[args.index("-b") + 1]) * 512 / 1e6
        ops = iops * secs
    else:
        m = re.search(r"ops=(\d+) bytes=(\d+) secs=([\d.]+) iops=([\d.]+) mbps=([\d.]+) "
                      r"errors=(\d+)", text)
        if out.returncode != 0 or not m:
            return None, text
        if int(m.group(6)):
            return None, text
        ops, iops, mbps = int(m.group(1)), float(m.group(4)), float(m.group(5))
    cpu_s = (c1 - c0) / CLK_TCK
    return {"iops": iops, "mbps": mbps, "cpu_us": cpu_s * 1e6 / max(ops, 1),
            "cpu_pct": 100 * cpu_s / wall}, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runtimes", default="mio,threads")
    ap.add_argument("--store", default="rdwr")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=BINARY:RUNTIME, another build of this daemon to compare "
                         "(e.g. a baseline before a change)")
    ap.add_argument("--only", default="", help="substring filter on workload names")
    ap.add_argument("--markdown", default="", help="also write the table here")
    a = ap.parse_args()

    if not shutil.which("tgtd") or not shutil.which("iscsi-perf"):
        sys.exit("needs tgt and libiscsi-bin: apt-get install -y tgt libiscsi-bin")
    work = tempfile.mkdtemp(prefix="bench-vs-tgt.")
    targets = []
    try:
        for rt in a.runtimes.split(","):
            targets.append(start_ours(a.daemon, rt, a.store, work))
        for e in a.extra:
            name, rest = e.split("=", 1)
            binary, rt = rest.rsplit(":", 1)
            targets.append(start_ours(binary, rt, a.store, work, name))
        targets.append(start_tgt(a.store, work))
        names = [t.name for t in targets]
        results = {}
        for wname, client, args in WORKLOADS:
            if a.only and a.only not in wname:
                continue
            samples = {n: [] for n in names}
            for _ in range(a.rounds):
                for t in targets:
                    r, text = run_client(t, client, args, a.secs, a.load)
                    if r is None:
                        print(f"{wname} on {t.name} failed:\n{text}", file=sys.stderr)
                        continue
                    samples[t.name].append(r)
            results[wname] = {
                n: {k: statistics.median(s[k] for s in v) for k in v[0]} if v else None
                for n, v in samples.items()
            }
            print(f"done: {wname}", file=sys.stderr, flush=True)
        lines = table(results, names, a)
        print("\n".join(lines))
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write("\n".join(lines) + "\n")
    finally:
        for t in targets:
            t.proc.send_signal(signal.SIGTERM)
        for t in targets:
            try:
                t.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                t.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def table(results, names, a):
    ours = [n for n in names if n != "tgt"]
    head = ["workload", "target", "IOPS", "MB/s", "CPU µs/IO", "daemon CPU %",
            "IOPS ×tgt", "CPU/IO ×tgt"]
    lines = [f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs,"
             f" store {a.store}, {a.secs} s per run, median of {a.rounds} rounds"
             " (targets alternated within each round).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, per in results.items():
        base = per.get("tgt")
        for n in ours + ["tgt"]:
            r = per.get(n)
            if r is None:
                lines.append(f"| {w} | {n} | failed | | | | | |")
                continue
            ri = rc = ""
            if n != "tgt" and base:
                ri = f"{r['iops'] / base['iops']:.2f}"
                rc = f"{r['cpu_us'] / base['cpu_us']:.2f}" if base["cpu_us"] > 0 else ""
            lines.append(f"| {w} | {n} | {r['iops']:.0f} | {r['mbps']:.1f} | "
                         f"{r['cpu_us']:.1f} | {r['cpu_pct']:.0f} | {ri} | {rc} |")
    return lines


if __name__ == "__main__":
    main()
