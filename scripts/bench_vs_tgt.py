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

# (name, client, args). iscsi-perf: reads only; iscsi-load: the project's own generator,
# which offers open-iscsi's defaults at login (InitialR2T=No, FirstBurstLength 256 KiB).
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
    # The same with the RFC 7143 default offer instead of open-iscsi's: the first 64 KiB as
    # immediate data, the rest only after an R2T.
    ("128k seqwrite QD8 (InitialR2T=Yes)", "load",
     ["--bs", "131072", "--qd", "8", "--seq", "--read-pct", "0", "--initial-r2t", "yes",
      "--first-burst", "65536"]),
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


def start_ours(binary, runtime, store, work, name=None, backing=None, daemon_extra="",
               env=None):
    """One daemon with LUN 1 on `backing` (default: a new sparse 1 GiB file).

    `daemon_extra` is appended to the [daemon] table (e.g. "reactors = 1\n"); `env` adds
    environment variables for the daemon process."""
    name = name or f"ours-{runtime}"
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d)
    img = backing
    if img is None:
        img = os.path.join(d, "lun.img")
        with open(img, "wb") as f:
            f.truncate(1 << 30)
    cfg = os.path.join(d, "t.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[daemon]\nlisten = ["127.0.0.1:{port}"]\nruntime = "{runtime}"\n'
            f'{daemon_extra}\n'
            f'[[target]]\ntid = 1\nname = "{IQN_OURS}"\ninitiators = ["ALL"]\n\n'
            f'[[target.lun]]\nlun = 1\nbacking_store = "{img}"\nbstype = "{store}"\n'
        )
    log = open(os.path.join(d, "daemon.log"), "w")
    p = subprocess.Popen(
        [binary, "daemon", "--config", cfg, "--control", os.path.join(d, "control.sock")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    wait_port(port)
    return Target(name, p.pid, port, IQN_OURS, p)


def start_tgt(store, work, name="tgt", backing=None, bsopts=None, iothreads=None, env=None):
    """tgtd with LUN 1 on `backing` (default: a new sparse 1 GiB file); `bsopts` is
    tgtadm's --bsopts (e.g. "conf=/etc/ceph/ceph.conf" for -E rbd), `iothreads` tgtd's -t."""
    port = free_port()
    ctl = str(port % 1000 + 100)
    d = os.path.join(work, name)
    os.makedirs(d)
    img = backing
    if img is None:
        img = os.path.join(d, "lun.img")
        with open(img, "wb") as f:
            f.truncate(1 << 30)
    log = open(os.path.join(d, "tgtd.log"), "w")
    cmd = ["tgtd", "-f", "-C", ctl, "--iscsi", f"portal=127.0.0.1:{port}"]
    if iothreads:
        cmd += ["-t", str(iothreads)]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})})
    wait_port(port)
    adm = ["tgtadm", "-C", ctl, "--lld", "iscsi"]
    subprocess.run(adm + ["--mode", "target", "--op", "new", "--tid", "1", "-T", IQN_TGT],
                   check=True)
    lu = adm + ["--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                "-E", store, "-b", img]
    if bsopts:
        lu += ["--bsopts", bsopts]
    subprocess.run(lu, check=True)
    subprocess.run(adm + ["--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL"],
                   check=True)
    return Target(name, p.pid, port, IQN_TGT, p)


def run_client(t, client, args, secs, load_bin):
    if client == "perf":
        cmd = ["iscsi-perf", *args, "-t", str(secs),
               f"iscsi://127.0.0.1:{t.port}/{t.iqn}/1"]
    else:
        cmd = [load_bin, "--portal", f"127.0.0.1:{t.port}", "--target", t.iqn,
               "--secs", str(secs), *args]
    # Write back what earlier runs left dirty first: otherwise the kernel flushes it (30 s
    # after it was written) during whichever run comes later, and that run pays for it.
    os.sync()
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
            results[wname] = medians(samples)
            print(f"done: {wname}", file=sys.stderr, flush=True)
        lines = table(results, names, a)
        print_table(lines, a.markdown)
    finally:
        stop(targets, work)


def medians(samples):
    """Per target, the median of each measured value over its rounds (None: no round ran)."""
    return {
        n: {k: statistics.median(s[k] for s in v) for k in v[0]} if v else None
        for n, v in samples.items()
    }


def print_table(lines, markdown):
    """Prints the table, and writes it to `markdown` too when given."""
    print("\n".join(lines))
    if markdown:
        with open(markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


def stop(targets, work):
    """SIGTERM every target (SIGKILL after 10 s) and remove the work directory."""
    for t in targets:
        t.proc.send_signal(signal.SIGTERM)
    for t in targets:
        try:
            t.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            t.proc.kill()
    shutil.rmtree(work, ignore_errors=True)


def table(results, names, a, extra_cols=()):
    """Markdown lines; `extra_cols` are (header, key, format) columns appended per row."""
    ours = [n for n in names if n != "tgt"]
    head = ["workload", "target", "IOPS", "MB/s", "CPU µs/IO", "daemon CPU %",
            "IOPS ×tgt", "CPU/IO ×tgt"] + [c[0] for c in extra_cols]
    lines = [f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs,"
             f" store {a.store}, {a.secs} s per run, median of {a.rounds} rounds"
             " (targets alternated within each round).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, per in results.items():
        base = per.get("tgt")
        for n in ours + ["tgt"]:
            if n not in per:
                continue
            r = per.get(n)
            if r is None:
                lines.append(f"| {w} | {n} | failed |" + " |" * (len(head) - 3))
                continue
            ri = rc = ""
            if n != "tgt" and base:
                ri = f"{r['iops'] / base['iops']:.2f}"
                rc = f"{r['cpu_us'] / base['cpu_us']:.2f}" if base["cpu_us"] > 0 else ""
            extra = "".join(f" {fmt.format(r[k]) if k in r else ''} |"
                            for _, k, fmt in extra_cols)
            lines.append(f"| {w} | {n} | {r['iops']:.0f} | {r['mbps']:.1f} | "
                         f"{r['cpu_us']:.1f} | {r['cpu_pct']:.0f} | {ri} | {rc} |{extra}")
    return lines


# ---------------------------------------------------------------------------------------
# Ceph RBD (scripts/bench-rbd.sh): the same image served by this daemon's rbd store and by
# tgt's bs_rbd (Debian tgt-rbd), against `rbd bench` on the image directly (no iSCSI).

# (name, client, client args, rbd bench (io-type, io-size, io-threads, io-pattern) or None)
RBD_WORKLOADS = [
    ("4k randread QD32", "load", ["--bs", "4096", "--qd", "32"], ("read", 4096, 32, "rand")),
    ("4k randread QD32 (iscsi-perf)", "perf", ["-r", "-m", "32", "-b", "8"], None),
    ("4k randread 4x QD8", "load", ["--bs", "4096", "--qd", "8", "--sessions", "4"],
     ("read", 4096, 32, "rand")),
    ("4k randwrite QD32", "load", ["--bs", "4096", "--qd", "32", "--read-pct", "0"],
     ("write", 4096, 32, "rand")),
    ("128k seqread QD8", "load", ["--bs", "131072", "--qd", "8", "--seq"],
     ("read", 131072, 8, "seq")),
    ("128k seqread QD8 (iscsi-perf)", "perf", ["-m", "8", "-b", "256"], None),
]

RBD_BENCH = "rbd bench"


class RbdBench:
    """`rbd bench` on the image itself, standing in the table as a pseudo-target."""
    name = RBD_BENCH

    def __init__(self, conf, spec):
        self.conf, self.spec = conf, spec


def run_rbd_bench(b, io, secs):
    io_type, size, threads, pattern = io
    cmd = ["rbd", "-c", b.conf, "bench", "--io-type", io_type, "--io-size", str(size),
           "--io-threads", str(threads), "--io-pattern", pattern, "--io-total", str(1 << 40),
           b.spec]
    w0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(secs)
    # CPU of the rbd process (librbd) over its whole run, read before it exits.
    try:
        cpu_s = cpu_ticks(p.pid) / CLK_TCK
    except (OSError, IndexError, ValueError):
        cpu_s = None
    wall = time.time() - w0
    p.send_signal(signal.SIGINT)  # rbd bench prints its summary line on SIGINT
    try:
        text = p.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        text = p.communicate()[0]
    m = re.search(r"elapsed:\s*[\d.]+\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)", text)
    if not m or cpu_s is None:
        return None, text
    ops, iops = int(m.group(1)), float(m.group(2))
    return {"iops": iops, "mbps": iops * size / 1e6, "cpu_us": cpu_s * 1e6 / max(ops, 1),
            "cpu_pct": 100 * cpu_s / wall}, text


def main_rbd(argv):
    ap = argparse.ArgumentParser(prog="bench_vs_tgt.py rbd")
    ap.add_argument("--daemon", required=True, help="tgt-cli built with --features rbd")
    ap.add_argument("--load", required=True)
    ap.add_argument("--conf", required=True, help="ceph.conf of the cluster")
    ap.add_argument("--pool", required=True)
    ap.add_argument("--image", required=True, help="a prefilled image")
    ap.add_argument("--osd-pid", type=int, default=0,
                    help="the ceph-osd's PID: adds its CPU µs per I/O to the table")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runtimes", default="mio,threads")
    ap.add_argument("--extra", action="append", default=[],
                    help="NAME=BINARY:RUNTIME[:VAR=VALUE,...], another build or setting of "
                         "this daemon (the variables go to its environment)")
    ap.add_argument("--tgt-threads", default="",
                    help="comma list of tgtd -t values (one tgtd each; default: tgtd's own)")
    ap.add_argument("--io-threads", default="",
                    help="comma list of [daemon] io_threads values: one more mio daemon each, "
                         "named mio-ioN")
    ap.add_argument("--no-rbd-bench", action="store_true")
    ap.add_argument("--note", default="", help="appended to the table's caption")
    ap.add_argument("--only", default="", help="substring filter on workload names")
    ap.add_argument("--markdown", default="", help="also write the table here")
    a = ap.parse_args(argv)

    if not shutil.which("tgtd") or not shutil.which("iscsi-perf"):
        sys.exit("needs tgt, tgt-rbd and libiscsi-bin: apt-get install -y tgt tgt-rbd libiscsi-bin")
    if not os.path.exists("/usr/lib/tgt/backing-store/bs_rbd.so"):
        sys.exit("tgtd has no rbd store: apt-get install -y tgt-rbd")
    spec = f"{a.pool}/{a.image}"
    ceph_env = {"CEPH_CONF": a.conf}
    work = tempfile.mkdtemp(prefix="bench-rbd.")
    targets = []
    try:
        for rt in a.runtimes.split(","):
            targets.append(start_ours(a.daemon, rt, "rbd", work,
                                      backing=f"rbd:{spec}:conf={a.conf}"))
        for e in a.extra:
            name, rest = e.split("=", 1)
            parts = rest.split(":", 2)
            env = dict(kv.split("=", 1) for kv in parts[2].split(",")) if len(parts) > 2 else {}
            targets.append(start_ours(parts[0], parts[1], "rbd", work, name,
                                      backing=f"rbd:{spec}:conf={a.conf}", env=env))
        for n in [x for x in a.io_threads.split(",") if x]:
            targets.append(start_ours(a.daemon, "mio", "rbd", work, f"mio-io{int(n)}",
                                      backing=f"rbd:{spec}:conf={a.conf}",
                                      daemon_extra=f"io_threads = {int(n)}\n"))
        for t in [x for x in a.tgt_threads.split(",") if x] or [None]:
            name = "tgt" if t is None or t == a.tgt_threads.split(",")[0] else f"tgt-t{t}"
            targets.append(start_tgt("rbd", work, name=name, backing=spec,
                                     bsopts=f"conf={a.conf}", iothreads=t, env=ceph_env))
        bench = None if a.no_rbd_bench else RbdBench(a.conf, spec)
        names = ([RBD_BENCH] if bench else []) + [t.name for t in targets]
        results = {}
        for wname, client, args, io in RBD_WORKLOADS:
            if a.only and a.only not in wname:
                continue
            runners = [t for t in targets]
            if bench and io:
                runners.insert(0, bench)
            samples = {t.name: [] for t in runners}
            for _ in range(a.rounds):
                for t in runners:
                    o0 = cpu_ticks(a.osd_pid) if a.osd_pid else 0
                    w0 = time.time()
                    if t is bench:
                        r, text = run_rbd_bench(bench, io, a.secs)
                    else:
                        r, text = run_client(t, client, args, a.secs, a.load)
                    if r is None:
                        print(f"{wname} on {t.name} failed:\n{text}", file=sys.stderr)
                        continue
                    if a.osd_pid:
                        osd_s = (cpu_ticks(a.osd_pid) - o0) / CLK_TCK
                        r["osd_us"] = osd_s * 1e6 / max(r["iops"] * (time.time() - w0), 1)
                    samples[t.name].append(r)
            results[wname] = medians(samples)
            print(f"done: {wname}", file=sys.stderr, flush=True)
        a.store = f"rbd (image {spec}{', ' + a.note if a.note else ''})"
        extra = [("OSD CPU µs/IO", "osd_us", "{:.1f}")] if a.osd_pid else []
        lines = table(results, names, a, extra)
        print_table(lines, a.markdown)
    finally:
        stop(targets, work)


if __name__ == "__main__":
    if sys.argv[1:2] == ["rbd"]:
        main_rbd(sys.argv[2:])
    else:
        main()
