#!/usr/bin/env python3
"""`bench net --outbound`: TCP throughput container -> host loopback through minidock's user-mode
stack, and through slirp4netns in the same run.

    scripts/bench_net.py [--size 1G] [--runs 3] [--reverse] [--no-vnet] [--no-slirp] [--bridge]

Per run and per stack, iperf3 (C on both ends, so the stack is what is measured) sends --size
bytes from inside a fresh user+network namespace to `iperf3 -s` bound to 127.0.0.1 on the host,
through the gateway address 10.0.2.2 -- which both stacks map to the host's loopback:

  minidock   tests/netns_harness.py: a veth pair at MTU 65520 in the namespace, an AF_PACKET
             socket on its gateway end, minidock.tcpip.Gateway(allow_host_loopback=True) in a
             thread of this process (PACKET_VNET_HDR unless --no-vnet).
  slirp4netns  (only when run as root and /usr/bin/slirp4netns exists; a benchmark peer, never
             used by minidock) `unshare -Urn` + `slirp4netns --configure --mtu=65520 PID tap0`.

Runs alternate between the stacks so both see the same machine load. Prints one row per stack
(Gbit/s: median, min, max of the receiver side) and the bench process's peak RSS (the gateway's
memory). --reverse measures host -> container instead (iperf3 -R).

The lead can wire this into scripts/bench as the `net` subcommand: `cmd_net(args)` returns the
rows; `add_arguments(parser)` declares the flags.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, os.path.dirname(HERE))

SLIRP = "/usr/bin/slirp4netns"


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _iperf(client_prefix, size, reverse):
    """One iperf3 transfer from inside a namespace to 127.0.0.1; returns receiver Gbit/s."""
    port = _free_port()
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # iperf3 -1 serves exactly one client, so no probe connection: wait until the port shows
    # up in LISTEN state in /proc/net/tcp (state 0A).
    hexport = f":{port:04X} "
    for _ in range(100):
        with open("/proc/net/tcp") as f:
            if any(hexport in line and line.split()[3] == "0A" for line in f):
                break
        time.sleep(0.05)
    try:
        argv = client_prefix + ["iperf3", "-c", "10.0.2.2", "-p", str(port), "-n", size, "-J"]
        if reverse:
            argv.append("-R")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
        return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_minidock(size, reverse, vnet, bridge=False, mtu=65520):
    from minidock.tcpip import Gateway
    from netns_harness import BRIDGE_NETWORK, NETWORK, Netns
    ns = Netns(vnet=vnet, bridge=bridge, mtu=mtu)
    if bridge:      # the tap on a bridge holding the gateway (minidock/network.py's layout)
        gw = Gateway(ns.packet_sock, networks=[BRIDGE_NETWORK], kernel_gateway=True,
                     host_alias="10.0.2.2", allow_host_loopback=True, logger=lambda m: None,
                     mtu=mtu)
    else:
        gw = Gateway(ns.packet_sock, networks=[NETWORK], allow_host_loopback=True,
                     logger=lambda m: None, mtu=mtu)
    t = threading.Thread(target=gw.run, daemon=True)
    t.start()
    try:
        gbit = _iperf(["nsenter", "-t", str(ns.pid), "-U", "-n", "--"], size, reverse)
        gw.packet_drops()
        interesting = {k: v for k, v in gw.stats.items() if k not in ("frames_in", "tcp_flows")}
        print(f"  minidock run: {gbit:.2f} Gbit/s, {gw.stats['frames_in']} frames in, "
              f"{gw.link.frames_out} out, {interesting}", file=sys.stderr)
        return gbit
    finally:
        gw.stop()
        t.join(10)
        ns.close()


def run_slirp(size, reverse):
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "600"])
    slirp = None
    try:
        time.sleep(0.3)
        slirp = subprocess.Popen([SLIRP, "--configure", "--mtu=65520", str(holder.pid), "tap0"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prefix = ["nsenter", "-t", str(holder.pid), "-U", "-n", "--preserve-credentials", "--"]
        for _ in range(100):            # until tap0 has its address
            r = subprocess.run(prefix + ["ip", "-4", "addr", "show", "tap0"], capture_output=True)
            if b"10.0.2.100" in r.stdout:
                break
            time.sleep(0.05)
        return _iperf(prefix, size, reverse)
    finally:
        for p in (slirp, holder):
            if p is not None:
                p.kill()
                p.wait()


def add_arguments(p):
    p.add_argument("--size", default="1G", help="bytes per transfer, iperf3 syntax (1G)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--reverse", action="store_true", help="host -> container instead")
    p.add_argument("--no-vnet", action="store_true", help="without PACKET_VNET_HDR")
    p.add_argument("--no-slirp", action="store_true")
    p.add_argument("--mtu", type=int, default=65520, help="of the veths (and the bridge)")
    p.add_argument("--bridge", action="store_true",
                   help="tap a bridge that holds the gateway (the daemon namespace's layout)")
    p.add_argument("--outbound", action="store_true", help="(the default direction)")


def cmd_net(args):
    stacks = [("minidock" + (" (no vnet hdr)" if args.no_vnet else "")
               + (" (bridge tap)" if args.bridge else "") + (f" (MTU {args.mtu})"
                                                               if args.mtu != 65520 else ""),
               lambda: run_minidock(args.size, args.reverse, not args.no_vnet, args.bridge,
                                    args.mtu))]
    if not args.no_slirp and os.geteuid() == 0 and shutil.which(SLIRP):
        stacks.append(("slirp4netns", lambda: run_slirp(args.size, args.reverse)))
    results = {name: [] for name, _ in stacks}
    for _ in range(args.runs):
        for name, fn in stacks:         # alternate, so both see the same load
            results[name].append(fn())
    rows = []
    for name, vals in results.items():
        rows.append({"stack": name, "direction": "host->container" if args.reverse
                     else "container->host", "size": args.size, "runs": len(vals),
                     "gbit_median": round(statistics.median(vals), 2),
                     "gbit_min": round(min(vals), 2), "gbit_max": round(max(vals), 2)})
    rows.append({"stack": "bench process peak RSS (MiB)",
                 "value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args()
    for row in cmd_net(args):
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    with open("/proc/loadavg") as f:
        print("loadavg", f.read().strip())


if __name__ == "__main__":
    main()
