#!/usr/bin/python3
"""Socket activation as systemd does it, for tests: bind the listening sockets while still root,
pass them as fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, then exec the command
(which may drop privileges itself, e.g. `setpriv --reuid=65534 ...`, keeping the PID, so that
LISTEN_PID still names the daemon).

usage: activate.py SPEC_JSON -- COMMAND [ARGS...]
SPEC_JSON: {"sockets": [{"name": "dns", "kind": "udp"|"tcp", "host": "127.0.0.153", "port": 53},
                        {"name": "userdb", "kind": "unix", "path": "/run/...", "mode": 438}]}
A socket may have "rcvbuf": BYTES, set with SO_RCVBUFFORCE as systemd's ReceiveBuffer= does (not
capped by net.core.rmem_max: the activator is root).
"""
import json
import os
import socket
import sys

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module

sep = sys.argv.index("--")
spec = json.loads(sys.argv[1])
command = sys.argv[sep + 1:]

opened = []
for s in spec["sockets"]:
    if s["kind"] in ("udp", "tcp"):
        family = socket.AF_INET6 if ":" in s["host"] else socket.AF_INET
        kind = socket.SOCK_DGRAM if s["kind"] == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s["host"], s["port"]))
        if kind == socket.SOCK_STREAM:
            sock.listen(4096)
    else:
        path = s["path"]
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, s.get("mode", 0o666))
        sock.listen(4096)
    if "rcvbuf" in s:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, s["rcvbuf"])
    opened.append((s["name"], sock))

# Move the sockets to 3, 4, ... (through a high range first, so that no number is clobbered).
high = [os.dup2(sock.fileno(), 100 + i, inheritable=True) for i, (_, sock) in enumerate(opened)]
for _, sock in opened:
    sock.close()
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)

os.environ["LISTEN_FDS"] = str(len(opened))
os.environ["LISTEN_FDNAMES"] = ":".join(name for name, _ in opened)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(command[0], command)
