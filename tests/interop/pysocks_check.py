#!/usr/bin/env python3
"""Drive a running ringsocks with PySocks, an independent SOCKS client.

usage: pysocks_check.py OPEN_PROXY_PORT AUTH_PROXY_PORT ECHO_PORT USER PASS
Prints one 'ok'/'FAIL' line per case and exits non-zero if any failed.
"""
import socket
import sys
import threading

import socks  # PySocks

open_port, auth_port, echo_port = (int(x) for x in sys.argv[1:4])
user, password = sys.argv[4], sys.argv[5]
failed = 0


def echo_through(proxy_type, port, dest, rdns=False, username=None, pw=None):
    s = socks.socksocket()
    s.settimeout(10)
    s.set_proxy(proxy_type, "127.0.0.1", port, rdns=rdns, username=username, password=pw)
    s.connect((dest, echo_port))
    msg = b"pysocks %d %s" % (proxy_type, dest.encode())
    s.sendall(msg)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got == msg


def case(name, fn):
    global failed
    try:
        ok = fn()
    except Exception as e:  # noqa: BLE001 - report any client error as a failure
        ok = False
        name += f" ({e!r})"
    print(("ok   " if ok else "FAIL ") + name)
    failed += 0 if ok else 1


case("pysocks socks4", lambda: echo_through(socks.SOCKS4, open_port, "127.0.0.1"))
case("pysocks socks4a", lambda: echo_through(socks.SOCKS4, open_port, "localhost", rdns=True))
case("pysocks socks5", lambda: echo_through(socks.SOCKS5, open_port, "127.0.0.1"))
case("pysocks socks5 remote dns", lambda: echo_through(socks.SOCKS5, open_port, "localhost", rdns=True))
case("pysocks socks5 user/pass",
     lambda: echo_through(socks.SOCKS5, auth_port, "127.0.0.1", username=user, pw=password))


def wrong_password_rejected():
    try:
        echo_through(socks.SOCKS5, auth_port, "127.0.0.1", username=user, pw=password + "x")
    except socks.SOCKS5AuthError:
        return True
    except socks.GeneralProxyError as e:
        return "auth" in str(e).lower()
    return False


case("pysocks socks5 wrong password rejected", wrong_password_rejected)


def refused_maps_to_0x05():
    s = socks.socksocket()
    s.settimeout(10)
    s.set_proxy(socks.SOCKS5, "127.0.0.1", open_port)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    try:
        s.connect(("127.0.0.1", port))
    except socks.ProxyError as e:
        # PySocks wraps the SOCKS5 error ("0x05: Connection refused") in socket_err.
        detail = str(getattr(e, "socket_err", "")) + str(e)
        return "0x05" in detail
    return False


case("pysocks socks5 refused destination -> 0x05", refused_maps_to_0x05)


# UDP ASSOCIATE: PySocks sends each datagram with a SOCKS5 UDP header through the relay
# address of the proxy's reply, and strips the header from the answers.
def udp_echo_server(family, host):
    srv = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    srv.bind((host, 0))

    def serve():
        while True:
            data, peer = srv.recvfrom(65536)
            srv.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def udp_roundtrip(dest, port, payload, rdns=False, proxy_port=None, username=None, pw=None):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port or open_port, rdns=rdns,
                username=username, password=pw)
    try:
        s.sendto(payload, (dest, port))
        data, source = s.recvfrom(70000)
        return data == payload and source[1] == port
    finally:
        s.close()


udp4 = udp_echo_server(socket.AF_INET, "127.0.0.1")
case("pysocks udp associate ipv4", lambda: udp_roundtrip("127.0.0.1", udp4, b"udp over ipv4"))
try:
    udp6 = udp_echo_server(socket.AF_INET6, "::1")
    case("pysocks udp associate ipv6", lambda: udp_roundtrip("::1", udp6, b"udp over ipv6"))
except OSError as e:
    print(f"skip pysocks udp associate ipv6 (no IPv6 loopback here: {e})")
udp_any = udp_echo_server(socket.AF_INET6, "::")
case("pysocks udp associate domain",
     lambda: udp_roundtrip("localhost", udp_any, b"udp by name", rdns=True))
case("pysocks udp associate user/pass",
     lambda: udp_roundtrip("127.0.0.1", udp4, b"udp with auth", proxy_port=auth_port,
                           username=user, pw=password))
# The largest IPv4 datagram the client can send: 65507 bytes with the 10-byte header.
case("pysocks udp associate 65497-byte payload",
     lambda: udp_roundtrip("127.0.0.1", udp4, bytes(range(256)) * 255 + bytes(217)))


def udp_many():
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.set_proxy(socks.SOCKS5, "127.0.0.1", open_port)
    try:
        for i in range(200):
            s.sendto(b"%d" % i, ("127.0.0.1", udp4))
            data, _ = s.recvfrom(1024)
            if data != b"%d" % i:
                return False
        return True
    finally:
        s.close()


case("pysocks udp associate 200 round trips", udp_many)


# BIND, which PySocks does not implement: a hand-written client (independent of the server's
# codec), as an active-mode FTP client would use it.
def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def socks5_bind():
    c = socket.create_connection(("127.0.0.1", open_port), timeout=10)
    c.sendall(b"\x05\x01\x00")
    if recv_exact(c, 2) != b"\x05\x00":
        return False
    c.sendall(b"\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") + (0).to_bytes(2, "big"))
    first = recv_exact(c, 10)
    if first[:4] != b"\x05\x00\x00\x01":
        return False
    host, port = socket.inet_ntoa(first[4:8]), int.from_bytes(first[8:10], "big")
    peer = socket.create_connection((host, port), timeout=10)
    second = recv_exact(c, 10)
    if second[:4] != b"\x05\x00\x00\x01" or int.from_bytes(second[8:10], "big") != peer.getsockname()[1]:
        return False
    peer.sendall(b"inbound data")
    ok = recv_exact(c, 12) == b"inbound data"
    c.sendall(b"reply")
    c.shutdown(socket.SHUT_WR)
    ok = ok and recv_exact(peer, 5) == b"reply" and peer.recv(1) == b""
    c.close()
    peer.close()
    return ok


case("hand-written socks5 bind", socks5_bind)
sys.exit(1 if failed else 0)
