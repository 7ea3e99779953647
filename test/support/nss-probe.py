#!/usr/bin/python3
"""Calls nss-mymachines' own entry point, _nss_mymachines_gethostbyname4_r (what getaddrinfo uses),
through ctypes: the module's answer in machined's order with each tuple's scopeid, before glibc
sorts anything. Prints one JSON object: {"status": N, "errno": N, "herrno": N, "tuples": [...]}.

usage: nss-probe.py NAME
"""
import ctypes
import json
import socket
import sys


class Tuple(ctypes.Structure):
    pass


# struct gaih_addrtuple { next; name; family; addr[4]; scopeid; }  (glibc nss.h)
Tuple._fields_ = [
    ("next", ctypes.POINTER(Tuple)),
    ("name", ctypes.c_char_p),
    ("family", ctypes.c_int),
    ("addr", ctypes.c_uint32 * 4),
    ("scopeid", ctypes.c_uint32),
]

lib = ctypes.CDLL("libnss_mymachines.so.2")
fn = lib._nss_mymachines_gethostbyname4_r
fn.restype = ctypes.c_int
fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(Tuple)), ctypes.c_char_p, ctypes.c_size_t,
               ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int32)]

name = sys.argv[1].encode()
buf = ctypes.create_string_buffer(65536)
pat = ctypes.POINTER(Tuple)()
err, herr, ttl = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int32(0)
status = fn(name, ctypes.byref(pat), buf, len(buf), ctypes.byref(err), ctypes.byref(herr), ctypes.byref(ttl))
tuples = []
if status == 1:  # NSS_STATUS_SUCCESS
    p = pat
    while p:
        t = p.contents
        raw = bytes(t.addr)
        family = socket.AF_INET6 if t.family == socket.AF_INET6 else socket.AF_INET
        addr = socket.inet_ntop(family, raw[:16] if family == socket.AF_INET6 else raw[:4])
        tuples.append({"family": 6 if family == socket.AF_INET6 else 4, "address": addr, "scopeid": t.scopeid})
        p = t.next
print(json.dumps({"status": status, "errno": err.value, "herrno": herr.value, "tuples": tuples}))
