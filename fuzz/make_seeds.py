#!/usr/bin/env python3
"""Writes the seed corpus: small valid inputs for each fuzz target, in fuzz/corpus/<target>/.

Each file is named after what it holds. Rerunning rewrites these seeds and leaves any other
file in the corpus (entries merged from fuzzing campaigns) alone. The input layout of each
target is described in fuzz/src/lib.rs.
"""

import ipaddress
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def port(p):
    return struct.pack(">H", p)


def v4(a):
    return ipaddress.IPv4Address(a).packed


def v6(a):
    return ipaddress.IPv6Address(a).packed


def addr_v4(a, p):
    return b"\x01" + v4(a) + port(p)


def addr_v6(a, p):
    return b"\x04" + v6(a) + port(p)


def addr_domain(d, p):
    return b"\x03" + bytes([len(d)]) + d + port(p)


def greeting(*methods):
    return b"\x05" + bytes([len(methods)]) + bytes(methods)


def s5_request(cmd, addr):
    return b"\x05" + bytes([cmd]) + b"\x00" + addr


def s4_request(cmd, p, ip, user=b""):
    return b"\x04" + bytes([cmd]) + port(p) + v4(ip) + user + b"\x00"


def s4a_request(cmd, p, host, user=b""):
    return b"\x04" + bytes([cmd]) + port(p) + b"\x00\x00\x00\x01" + user + b"\x00" + host + b"\x00"


def login(user, password):
    return b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password


# Handshake flags byte: bit 0 password required, bit 1 allow SOCKS4, bits 2-3 credential
# judge (0 accept, 1 reject, 2 user == password, 3 password non-empty), bits 4-7 split mode
# (0 byte by byte, n: random pieces of 1 to 4n bytes). Then a seed byte, then the stream.
OPEN, USERS, USERS_SOCKS4 = 0x00, 0x01, 0x03
REJECT = 0x04

HANDSHAKE = {
    "s5-noauth-connect-v4": (OPEN, greeting(0x00) + s5_request(1, addr_v4("127.0.0.1", 80))),
    "s5-noauth-connect-v6-pieces": (
        OPEN | 0x30,
        greeting(0x00, 0x02) + s5_request(1, addr_v6("2001:db8::1", 443)),
    ),
    "s5-noauth-domain-pipelined": (
        OPEN | 0x10,
        greeting(0x00) + s5_request(1, addr_domain(b"example.com", 443)) + b"GET / HTTP/1.1\r\n",
    ),
    "s5-udp-associate": (OPEN, greeting(0x00) + s5_request(3, addr_v4("0.0.0.0", 0))),
    "s5-bind": (OPEN, greeting(0x00) + s5_request(2, addr_v4("192.0.2.1", 21))),
    "s5-login-connect": (
        USERS | 0x20,
        greeting(0x00, 0x02) + login(b"alice", b"pw") + s5_request(1, addr_domain(b"example.org", 80)),
    ),
    "s5-login-rejected": (
        USERS | REJECT,
        greeting(0x02) + login(b"alice", b"wrong") + s5_request(1, addr_v4("10.0.0.1", 22)),
    ),
    "s5-login-open-proxy": (OPEN, greeting(0x02) + login(b"bob", b"") + s5_request(1, addr_v4("1.2.3.4", 80))),
    "s5-no-acceptable-method": (USERS, greeting(0x00)),
    "s5-partial-request": (OPEN | 0x10, greeting(0x00) + s5_request(1, addr_v6("::1", 80))[:9]),
    "s4-connect": (OPEN, s4_request(1, 80, "127.0.0.1", b"bob")),
    "s4-connect-users-allowed": (USERS_SOCKS4 | 0x10, s4_request(1, 80, "198.51.100.7")),
    "s4-refused-with-users": (USERS, s4_request(1, 80, "198.51.100.7", b"carol")),
    "s4a-bind": (OPEN | 0x20, s4a_request(2, 6667, b"irc.example.net", b"dave")),
    "bad-version": (OPEN, b"GET / HTTP/1.1\r\n\r\n"),
}

SOCKS_CODECS = {
    # Selector byte (mod 10): 0 SOCKS4 request, 1 SOCKS4 reply, 2 SOCKS5 greeting,
    # 3 SOCKS5 method selection, 4 SOCKS5 request, 5 SOCKS5 reply, 6 RFC 1929 request,
    # 7 RFC 1929 response, 8 SOCKS5 address, 9 every decoder.
    "s4-request": (0, s4_request(1, 443, "203.0.113.9", b"user")),
    "s4a-request": (0, s4a_request(1, 80, b"example.com")),
    "s4-reply": (1, b"\x00\x5a" + port(1080) + v4("192.0.2.1")),
    "s5-greeting": (2, greeting(0x00, 0x01, 0x02, 0x80)),
    "s5-method-selection": (3, b"\x05\x02"),
    "s5-request-v4": (4, s5_request(1, addr_v4("127.0.0.1", 80))),
    "s5-request-v6-mapped": (4, s5_request(3, addr_v6("::ffff:10.0.0.1", 53))),
    "s5-request-domain": (4, s5_request(2, addr_domain(b"ftp.example.net", 21))),
    "s5-reply-v4": (5, b"\x05\x00\x00" + addr_v4("192.0.2.7", 40000)),
    "s5-reply-domain": (5, b"\x05\x04\x00" + addr_domain(b"relay.example", 1080)),
    "rfc1929-request": (6, login(b"alice", b"correct horse")),
    "rfc1929-response": (7, b"\x01\x00"),
    "addr-v6": (8, addr_v6("2001:db8::42", 8443)),
    "all-decoders": (9, s5_request(1, addr_v4("10.1.2.3", 25))),
}

UDP_HEADER = {
    "v4": b"\x00\x00\x00" + addr_v4("198.51.100.1", 53) + b"payload",
    "v6": b"\x00\x00\x00" + addr_v6("2001:db8::53", 53) + b"\x12\x34",
    "v6-mapped": b"\x00\x00\x00" + addr_v6("::ffff:192.0.2.1", 123),
    "domain": b"\x00\x00\x00" + addr_domain(b"dns.example", 53) + b"query",
    "fragment": b"\x00\x00\x01" + addr_v4("198.51.100.1", 53),
}

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd, fam, body):
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


PROXY = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1080\r\n\x05\x01\x00",
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1080\r\n",
    "v1-tcp6-mapped": b"PROXY TCP6 ::ffff:192.0.2.1 ::1 65535 0\r\n",
    "v1-unknown": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    "v1-unknown-bare": b"PROXY UNKNOWN\r\n",
    "v2-local": v2(0, 0x00, b""),
    "v2-proxy-tcp4": v2(1, 0x11, v4("192.0.2.1") + v4("198.51.100.2") + port(56324) + port(1080)) + b"\x05",
    "v2-proxy-tcp6-tlv": v2(
        1,
        0x21,
        v6("2001:db8::1") + v6("2001:db8::2") + port(1) + port(2) + b"\x05\x00\x04abcd" + b"\x04\x00\x00",
    ),
    "v2-proxy-unspec": v2(1, 0x00, b"\x01\x00\x01x"),
    "v2-proxy-udp4": v2(1, 0x12, v4("192.0.2.1") + v4("198.51.100.2") + port(1) + port(2)),
}

CONFIG = {
    "users-inline": b'listen = ["127.0.0.1:1080"]\nusers = { alice = "SECRET-pw-1" }\n',
    "users-table": b'threads = 2\n[users]\nalice = "SECRET-pw-2"\nbob = "hunter2"\n',
    "users-integer-password": b"[users]\nalice = 12345678\n",
    "users-bad-table": b'[users]\nalice = ["SECRET-pw-3"]\n',
    "durations-and-rates": (
        b'handshake_timeout = "10s"\nconnect_timeout = 2.5\nidle_timeout = 0\n'
        b'drain_timeout = "1m"\nbandwidth_per_user = "10M"\n[user_bandwidth]\nalice = 1000\n'
    ),
    "value-syntaxes": b"connect_timeout = 2.5e1\nbacklog = 0x80\nthreads = 1_0\nidle_timeout = '1h'\n",
    "limits": (
        b"backlog = 128\nbuffer_size = 65536\npipe_size = 65536\nmax_tunnels = 10\n"
        b"max_tunnels_per_client = 2\nmax_tunnels_per_user = 3\nmax_auth_failures = 5\n"
        b'auth_failure_window = "60s"\nallow_open = false\nallow_socks4 = true\n'
        b'runtime = "epoll"\nrelay = "adaptive"\nlog_level = "info"\nsetuid = "nobody"\n'
    ),
    "network": (
        b'egress_ip = "192.0.2.10"\nudp_advertise = ["203.0.113.7", "0.0.0.0:1080=198.51.100.1"]\n'
        b'proxy_listen = ["[::1]:1081"]\nproxy_from = ["10.0.0.0/8", "::1"]\n'
        b'metrics = "127.0.0.1:9180"\nbind_timeout = "500ms"\nhappy_eyeballs_delay = "250ms"\n'
    ),
    "access-rules": (
        b'[access]\ndefault = "block"\npreset = "egress"\n\n[[access.rule]]\nname = "web"\n'
        b'action = "pass"\nclient = ["198.51.100.0/24", "2001:db8::/32"]\nuser = ["alice"]\n'
        b'command = ["connect", "udp"]\ndest = [".example.com", "93.184.215.14", "10.0.0.0/8", "host-1"]\n'
        b'port = ["443", "8000-8999"]\nlog = true\n\n[[access.rule]]\naction = "block"\nport = ["25"]\n'
    ),
    "syntax-error-in-users": b'[users]\nalice = "SECRET-unterminated\n',
}


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    for name, (flags, stream) in HANDSHAKE.items():
        write("handshake", name, bytes([flags, 0x5A]) + stream)
    for name, (selector, data) in SOCKS_CODECS.items():
        write("socks_codecs", name, bytes([selector]) + data)
    for name, data in UDP_HEADER.items():
        write("udp_header", name, data)
    for name, data in PROXY.items():
        write("proxy_protocol", name, data)
    for name, data in CONFIG.items():
        write("config", name + ".toml", data)
    for example in ("ringsocks.example.toml", "edge.example.toml"):
        write("config", example, (HERE.parent / example).read_bytes())


if __name__ == "__main__":
    main()
