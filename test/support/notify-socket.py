#!/usr/bin/python3
"""A stand-in for systemd's notification socket, for one service process.

    notify-socket.py SOCKET_PATH -- COMMAND [ARGS...]

Binds a unix datagram socket at SOCKET_PATH (with SO_PASSCRED, as systemd does), then runs COMMAND
with NOTIFY_SOCKET=SOCKET_PATH. Every message received is written to stderr as one line

    NOTIFY pid=<sender pid from SCM_CREDENTIALS> <the message's lines, joined by spaces>

on the same stderr the command writes its log to, so a reader sees the command's lines and the
notifications in the order they really happened. File descriptors that come with a message (the
BARRIER=1 of sd_notify_barrier(3), which systemd-notify sends and then waits on) are closed at once,
as systemd does. SIGTERM and SIGINT are passed on to the command; the exit status is the command's
(128 + N when a signal N ended it). The socket is removed at the end.
"""
import os
import select
import signal
import socket
import struct
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.stderr.write(f"usage: {sys.argv[0]} SOCKET_PATH -- COMMAND [ARGS...]\n")
        return 2
    path, command = sys.argv[1], sys.argv[3:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if os.path.exists(path):
        os.unlink(path)
    sock.bind(path)

    pid = os.fork()
    if pid == 0:
        os.environ["NOTIFY_SOCKET"] = path
        os.execvp(command[0], command)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, _frame: os.kill(pid, n))
    pidfd = os.pidfd_open(pid)
    ucred = struct.calcsize("3i")
    ancillary = socket.CMSG_SPACE(ucred) + socket.CMSG_SPACE(16 * 4)

    def receive() -> None:
        data, ancdata, _flags, _addr = sock.recvmsg(65536, ancillary)
        sender = 0
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = struct.unpack("3i", payload[:ucred])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for (fd,) in struct.iter_unpack("i", payload[: len(payload) - len(payload) % 4]):
                    os.close(fd)
        text = " ".join(line for line in data.decode("utf-8", "replace").split("\n") if line)
        sys.stderr.write(f"NOTIFY pid={sender} {text}\n")
        sys.stderr.flush()

    try:
        while True:
            try:
                ready, _, _ = select.select([sock, pidfd], [], [])
            except InterruptedError:
                continue
            if sock in ready:
                receive()
            elif pidfd in ready:
                break
        sock.setblocking(False)
        while True:  # what was sent just before the exit
            try:
                receive()
            except BlockingIOError:
                break
        _, status = os.waitpid(pid, 0)
    finally:
        os.unlink(path)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
