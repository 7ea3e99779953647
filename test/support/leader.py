#!/usr/bin/python3
"""A machine "leader" for tests: unshare the requested namespaces, tell the parent (one line on
stdout), wait until it has written uid/gid maps and set up the network namespace (a line on
stdin), optionally become root inside the new user namespace, then exec `sleep infinity`: the PID
stays the same throughout, so the PID the test registers is the machine's leader.

usage: leader.py [--user] [--net] [--uts=HOSTNAME] [--become-root] [--bind=SRC:DST ...] [--root=DIR]

--bind gives the leader a mount namespace of its own with SRC bind-mounted over DST, so that
/proc/PID/root/DST shows the machine's own file (e.g. its /etc/passwd) as it would for a real
container.

--root=DIR makes DIR the leader's root directory (chroot, which a user namespace's root may do), so
that /proc/PID/root is DIR: a container whose files are whatever the test put there, symlinks and
FIFOs included. Such a leader does not exec sleep (there is none in DIR); it waits for signals.
"""
import ctypes
import os
import signal
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

flags, hostname, become_root, binds, root = 0, None, False, [], None
for arg in sys.argv[1:]:
    if arg == "--user":
        flags |= CLONE_NEWUSER
    elif arg == "--net":
        flags |= CLONE_NEWNET
    elif arg.startswith("--uts="):
        flags |= CLONE_NEWUTS
        hostname = arg.split("=", 1)[1]
    elif arg == "--become-root":
        become_root = True
    elif arg.startswith("--root="):
        root = arg.split("=", 1)[1]
    elif arg.startswith("--bind="):
        src, dst = arg.split("=", 1)[1].split(":", 1)
        binds.append((src, dst))
        flags |= CLONE_NEWNS
    else:
        sys.exit("leader.py: unknown option " + arg)

libc = ctypes.CDLL(None, use_errno=True)
if flags and libc.unshare(flags) != 0:
    sys.exit("leader.py: unshare failed: " + os.strerror(ctypes.get_errno()))
sys.stdout.write("unshared\n")
sys.stdout.flush()
if sys.stdin.readline() == "":
    sys.exit(0)  # the test went away before releasing us
if binds:
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        sys.exit("leader.py: making / private failed: " + os.strerror(ctypes.get_errno()))
    for src, dst in binds:
        if libc.mount(src.encode(), dst.encode(), None, MS_BIND, None) != 0:
            sys.exit("leader.py: bind %s over %s failed: %s" % (src, dst, os.strerror(ctypes.get_errno())))
if hostname:
    name = hostname.encode()
    libc.sethostname(name, len(name))
if become_root:
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)
if root:
    os.chroot(root)
    os.chdir("/")
    while True:
        signal.pause()
os.execvp("sleep", ["sleep", "infinity"])
