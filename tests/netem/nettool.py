#!/usr/bin/env python3
"""Target servers and SOCKS5 test clients for tests/netem/run.sh (Python stdlib only).

  nettool.py servers ECHO_ADDR RESET_ADDR RSTLOG
      echo server (echoes everything, half-closes on EOF) and reset server (reads a token
      line, sends 64 KiB, waits for one byte, then closes with SO_LINGER 0 = RST and appends
      "token monotonic_time" to RSTLOG). Runs until killed.
  nettool.py transfer PROXY DEST BYTES COUNT SEED TIMEOUT
      COUNT concurrent SOCKS5 CONNECTs to the echo server; each sends BYTES seeded
      pseudo-random bytes, half-closes, reads the echo to EOF; sha256 of sent and received
      must match. Bounded by TIMEOUT seconds in all.
  nettool.py reset PROXY DEST RSTLOG TOKEN LIMIT
      one CONNECT to the reset server; after the target's RST, the connection must end
      (EOF or ECONNRESET) within LIMIT seconds.
  nettool.py blackhole PROXY DEST COUNT MIN MAX
      COUNT concurrent CONNECTs to a destination whose SYNs go unanswered; each must get
      reply 0x04 or 0x03 after MIN..MAX seconds.
  nettool.py direct DEST
      a plain TCP connect (no proxy) must fail: proves the proxy is the only path.

Every client command prints one summary line starting with "ok" or "fail" (exit 0 / 1).
Addresses are HOST:PORT (IPv4).
"""
import hashlib
import os
import random
import socket
import struct
import sys
import threading
import time

mono = time.monotonic


def addr(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise ConnectionError(f"EOF after {len(b)} of {n} bytes")
        b += d
    return b


def socks5_connect(proxy, dest, timeout):
    """Returns (socket, reply_code, seconds_from_request_to_reply)."""
    s = socket.create_connection(proxy, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x05\x01\x00")
    if recv_exact(s, 2) != b"\x05\x00":
        raise ConnectionError("method not accepted")
    t0 = mono()
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(dest[0]) + struct.pack("!H", dest[1]))
    head = recv_exact(s, 4)
    dt = mono() - t0
    if head[0] != 5:
        raise ConnectionError(f"bad reply version {head[0]}")
    atyp = head[3]
    alen = {1: 4, 4: 16}.get(atyp)
    if alen is None and atyp == 3:
        alen = recv_exact(s, 1)[0]
    if alen is None:
        raise ConnectionError(f"bad reply atyp {atyp}")
    recv_exact(s, alen + 2)
    return s, head[1], dt


# ---------------------------------------------------------------- servers

def serve_echo(c):
    try:
        with c:
            c.settimeout(300)
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)  # wait for the peer's close
    except OSError:
        pass


def serve_reset(c, rstlog):
    try:
        c.settimeout(60)
        f = c.makefile("rb")
        token = f.readline().strip().decode()
        c.sendall(random.Random(token).randbytes(64 * 1024))
        if not c.recv(1):
            c.close()
            return
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t = mono()
        c.close()
        f.close()
        with open(rstlog, "a") as log:
            log.write(f"{token} {t:.6f}\n")
    except OSError:
        c.close()


def accept_loop(srv, handler, *args):
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handler, args=(c,) + args, daemon=True).start()


def cmd_servers(echo, reset, rstlog):
    e = socket.create_server(addr(echo), backlog=512)
    r = socket.create_server(addr(reset), backlog=512)
    threading.Thread(target=accept_loop, args=(r, serve_reset, rstlog), daemon=True).start()
    print("servers ready", flush=True)
    accept_loop(e, serve_echo)


# ---------------------------------------------------------------- clients

def one_transfer(proxy, dest, data, deadline, res, i):
    t0 = mono()
    r = {"ok": False, "err": "", "secs": 0.0, "got": 0}
    res[i] = r
    try:
        s, code, _ = socks5_connect(proxy, dest, max(1.0, deadline - mono()))
    except OSError as e:
        r["err"] = f"connect: {e!r}"
        return
    if code != 0:
        r["err"] = f"reply {code:#04x}"
        s.close()
        return
    # Watchdog: unblock both directions when the deadline passes.
    done = threading.Event()

    def watchdog():
        if not done.wait(max(0.0, deadline - mono())):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    threading.Thread(target=watchdog, daemon=True).start()
    s.settimeout(None)
    send_err = []

    def sender():
        try:
            mv = memoryview(data)
            for off in range(0, len(data), 1 << 16):
                s.sendall(mv[off:off + (1 << 16)])
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append(repr(e))

    st = threading.Thread(target=sender, daemon=True)
    st.start()
    h = hashlib.sha256()
    got = 0
    try:
        while True:
            d = s.recv(1 << 18)
            if not d:
                break
            h.update(d)
            got += len(d)
    except OSError as e:
        r["err"] = f"recv after {got} bytes: {e!r}"
    st.join(max(0.0, deadline - mono()) + 1)
    done.set()
    s.close()
    r["secs"] = mono() - t0
    r["got"] = got
    if mono() > deadline:
        r["err"] = (r["err"] + " " if r["err"] else "") + "deadline passed"
    if send_err:
        r["err"] = (r["err"] + " " if r["err"] else "") + "send: " + send_err[0]
    if not r["err"]:
        if got != len(data):
            r["err"] = f"got {got} of {len(data)} bytes"
        elif h.digest() != hashlib.sha256(data).digest():
            r["err"] = "sha256 mismatch (same length, different bytes)"
        else:
            r["ok"] = True


def cmd_transfer(proxy, dest, nbytes, count, seed, timeout):
    proxy, dest = addr(proxy), addr(dest)
    nbytes, count, seed, timeout = int(nbytes), int(count), int(seed), float(timeout)
    datas = [random.Random(seed * 1000 + i).randbytes(nbytes) for i in range(count)]
    t0 = mono()
    deadline = t0 + timeout
    res = [None] * count
    ths = [threading.Thread(target=one_transfer, args=(proxy, dest, datas[i], deadline, res, i),
                            daemon=True) for i in range(count)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(max(0.0, deadline - mono()) + 5)
    total = mono() - t0
    res = [r or {"ok": False, "err": "did not finish", "secs": total, "got": 0} for r in res]
    secs = " ".join(f"{r['secs']:.1f}" for r in res)
    mib = nbytes * count / 1048576
    figures = (f"{count}x{nbytes / 1048576:g} MiB echoed in {total:.1f} s "
               f"({mib / total:.2f} MiB/s each way; per transfer s: {secs})")
    bad = [f"#{i}: {r['err']}" for i, r in enumerate(res) if not r["ok"]]
    if bad:
        print(f"fail {figures}; " + "; ".join(bad))
        return 1
    print(f"ok {figures}, sha256 equal")
    return 0


def cmd_reset(proxy, dest, rstlog, token, limit):
    proxy, dest, limit = addr(proxy), addr(dest), float(limit)
    try:
        s, code, _ = socks5_connect(proxy, dest, 10)
        if code != 0:
            print(f"fail reply {code:#04x}")
            return 1
        s.sendall(token.encode() + b"\n")
        expect = random.Random(token).randbytes(64 * 1024)
        got = recv_exact(s, len(expect))
        if got != expect:
            print("fail the 64 KiB before the reset differ")
            return 1
        s.sendall(b"k")
    except OSError as e:
        print(f"fail before the reset: {e!r}")
        return 1
    t_sent = mono()
    s.settimeout(limit + 5)
    how, extra = "", 0
    try:
        while True:
            d = s.recv(65536)
            if not d:
                how = "EOF"
                break
            extra += len(d)
    except ConnectionResetError:
        how = "ECONNRESET"
    except socket.timeout:
        how = "timeout"
    except OSError as e:
        how = repr(e)
    t_end = mono()
    s.close()
    t_rst = None
    for _ in range(20):
        try:
            with open(rstlog) as f:
                for line in f:
                    k, v = line.split()
                    if k == token:
                        t_rst = float(v)
        except OSError:
            pass
        if t_rst is not None:
            break
        time.sleep(0.1)
    if t_rst is None:
        print(f"fail the target never logged its reset (client saw {how} after "
              f"{t_end - t_sent:.3f} s)")
        return 1
    delay = t_end - t_rst
    figures = f"client saw {how} {delay * 1000:.0f} ms after the target's RST"
    if extra:
        figures += f" ({extra} unexpected bytes before it)"
    if how not in ("EOF", "ECONNRESET") or delay > limit or extra:
        print(f"fail {figures} (limit {limit:g} s)")
        return 1
    print(f"ok {figures}")
    return 0


def cmd_blackhole(proxy, dest, count, lo, hi):
    proxy, dest = addr(proxy), addr(dest)
    count, lo, hi = int(count), float(lo), float(hi)
    res = [None] * count

    def one(i):
        try:
            s, code, dt = socks5_connect(proxy, dest, hi + 10)
            s.close()
            res[i] = (code, dt, "")
        except OSError as e:
            res[i] = (None, 0.0, repr(e))

    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(hi + 15)
    bad = []
    codes = {}
    for i, r in enumerate(res):
        if r is None:
            bad.append(f"#{i}: no answer")
            continue
        code, dt, err = r
        if err:
            bad.append(f"#{i}: {err}")
        elif code not in (3, 4):
            bad.append(f"#{i}: reply {code:#04x} after {dt:.2f} s")
        elif not lo <= dt <= hi:
            bad.append(f"#{i}: reply {code:#04x} after {dt:.2f} s, outside {lo:g}..{hi:g} s")
        if code is not None:
            codes[f"{code:#04x}"] = codes.get(f"{code:#04x}", 0) + 1
    dts = [r[1] for r in res if r and not r[2]]
    span = f"{min(dts):.2f}..{max(dts):.2f} s" if dts else "-"
    figures = f"{count} CONNECT(s): replies {codes} after {span}"
    if bad:
        print(f"fail {figures}; " + "; ".join(bad[:5]))
        return 1
    print(f"ok {figures}")
    return 0


def cmd_direct(dest):
    try:
        socket.create_connection(addr(dest), timeout=3).close()
    except OSError as e:
        print(f"ok direct connect failed: {e!r}")
        return 0
    print("fail the client reached the target without the proxy")
    return 1


def main():
    cmds = {"servers": cmd_servers, "transfer": cmd_transfer, "reset": cmd_reset,
            "blackhole": cmd_blackhole, "direct": cmd_direct}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__)
        return 2
    return cmds[sys.argv[1]](*sys.argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main())
