#!/usr/bin/env python3
"""Drive a running ringsocks with PySocks, an independent SOCKS client.

usage: pysocks_check.py OPEN_PROXY_PORT AUTH_PROXY_PORT ECHO_PORT USER PASS
Prints one 'ok'/'FAIL' line per case and exits non-zero if any failed.
"""
import socket
import sys

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
sys.exit(1 if failed else 0)
