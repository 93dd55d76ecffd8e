"""A TCP echo server on 127.0.0.1:PORT for the shell suites: every connection echoes until
EOF, then half-closes. Usage: python3 tests/common/echo_server.py PORT"""
import socket
import sys
import threading

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), reuse_port=True)


def serve(c):
    with c:
        while d := c.recv(65536):
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)


while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
