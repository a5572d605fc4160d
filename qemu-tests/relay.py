#!/usr/bin/env python3
"""QEMU guestfwd helper: one guest TCP connection on stdin/stdout <-> HOST PORT."""
import os
import select
import socket
import sys

s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
fds = [0, s.fileno()]
while True:
    r, _, _ = select.select(fds, [], [])
    if 0 in r:
        b = os.read(0, 65536)
        if not b:
            s.shutdown(socket.SHUT_WR)
            fds.remove(0)
        else:
            s.sendall(b)
    if s.fileno() in r:
        b = s.recv(65536)
        if not b:
            break
        os.write(1, b)
