#!/usr/bin/env python3
"""Userspace stand-in for `tc netem` on one link, for kernels built without sch_netem.

usage: impair.py NS_A IF_A NS_B IF_B PARAMS_FILE

Creates TUN device IF_A in network namespace NS_A and IF_B in NS_B (both non-persistent:
they vanish when this process exits) and forwards IP packets between them. Each direction
applies netem's model to every packet:
  loss L%          dropped with probability L
  reorder R% C%    with probability R (correlation C) sent at once, without the delay
  delay D J        otherwise held D +- J ms (uniform jitter; jitter reorders too)
  limit 1000       at most 1000 packets held per direction (tail drop, as netem's default)

PARAMS_FILE holds one line "delay_ms jitter_ms loss_pct reorder_pct reorder_corr_pct"
(all 0: a plain wire). It is re-read when its mtime changes (checked every 50 ms); once the
new values are in force they are written to PARAMS_FILE.ack, which the caller waits for.
Counters go to stdout on SIGTERM and every 5 s when packets moved. Python stdlib only.
"""
import ctypes
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
LIMIT = 1000

libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns: " + os.strerror(e))


def open_tun(ns, name, home):
    nsfd = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        setns(nsfd)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    finally:
        setns(home)
        os.close(nsfd)
    return fd


class Direction:
    def __init__(self, name, out_fd):
        self.name = name
        self.out = out_fd
        self.held = []  # heap of (due, seq, packet)
        self.seq = 0
        self.corr_last = random.random()
        self.stats = dict(pkts=0, lost=0, reordered=0, limit_drop=0, write_err=0)

    def take(self, pkt, now, p):
        delay, jitter, loss, reorder, corr = p
        self.stats["pkts"] += 1
        if loss > 0 and random.random() * 100 < loss:
            self.stats["lost"] += 1
            return
        due = now
        if delay > 0 or jitter > 0:
            immediate = False
            if reorder > 0:
                c = corr / 100.0
                self.corr_last = (1 - c) * random.random() + c * self.corr_last
                immediate = self.corr_last * 100 < reorder
            if immediate:
                self.stats["reordered"] += 1
            else:
                due = now + max(0.0, delay + random.uniform(-jitter, jitter)) / 1000.0
        if due <= now and not self.held:
            self.send(pkt)
            return
        if len(self.held) >= LIMIT:
            self.stats["limit_drop"] += 1
            return
        self.seq += 1
        heapq.heappush(self.held, (due, self.seq, pkt))

    def send(self, pkt):
        try:
            os.write(self.out, pkt)
        except OSError:
            self.stats["write_err"] += 1

    def flush(self, now):
        h = self.held
        while h and h[0][0] <= now:
            self.send(heapq.heappop(h)[2])
        return h[0][0] if h else None


def main():
    ns_a, if_a, ns_b, if_b, pfile = sys.argv[1:6]
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fa = open_tun(ns_a, if_a, home)
    fb = open_tun(ns_b, if_b, home)
    ab = Direction(f"{if_a}->{if_b}", fb)
    ba = Direction(f"{if_b}->{if_a}", fa)
    params = [0.0, 0.0, 0.0, 0.0, 0.0]
    mtime = None
    last_check = 0.0
    last_report = time.monotonic()
    reported = 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print(f"ready {if_a}@{ns_a} <-> {if_b}@{ns_b}", flush=True)
    poller = select.poll()
    poller.register(fa, select.POLLIN)
    poller.register(fb, select.POLLIN)
    route = {fa: ab, fb: ba}
    timeout = 50
    while not stop:
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            d = route[fd]
            for _ in range(256):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                d.take(pkt, now, params)
        next_due = None
        for d in (ab, ba):
            t = d.flush(now)
            if t is not None and (next_due is None or t < next_due):
                next_due = t
        if now - last_check >= 0.05:
            last_check = now
            try:
                m = os.stat(pfile).st_mtime_ns
            except OSError:
                m = None
            if m is not None and m != mtime:
                mtime = m
                try:
                    with open(pfile) as f:
                        vals = [float(x) for x in f.read().split()]
                    if len(vals) == 5:
                        params = vals
                        with open(pfile + ".ack.tmp", "w") as f:
                            f.write(" ".join(f"{v:g}" for v in vals) + "\n")
                        os.replace(pfile + ".ack.tmp", pfile + ".ack")
                        print("params " + " ".join(f"{v:g}" for v in vals), flush=True)
                except (OSError, ValueError) as e:
                    print(f"bad params file: {e}", flush=True)
        if now - last_report >= 5:
            last_report = now
            total = ab.stats["pkts"] + ba.stats["pkts"]
            if total != reported:
                reported = total
                print(f"{ab.name} {ab.stats} | {ba.name} {ba.stats}", flush=True)
        if next_due is None:
            timeout = 50
        else:
            timeout = max(0, min(50, int((next_due - now) * 1000 + 0.999)))
    print(f"final {ab.name} {ab.stats} | {ba.name} {ba.stats}", flush=True)


if __name__ == "__main__":
    main()
