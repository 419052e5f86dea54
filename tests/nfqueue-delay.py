#!/usr/bin/env python3
"""Network latency without the netem qdisc: holds every packet of one NFQUEUE
queue for a fixed time, then accepts it.

    nfqueue-delay.py QUEUE_NUM DELAY_MS

Used by tests/netem.ts on kernels built without sch_netem. iptables rules send
the packets to the queue (`-j NFQUEUE --queue-num N`). This speaks the
nfnetlink_queue protocol directly over a netlink socket (no library needed);
the kernel keeps each packet while we hold only its ID. Every packet gets the
same delay, so release order is arrival order and one batch verdict ("accept
every ID up to N") releases all packets that are due. Prints "ready" once the
queue is bound; exits when stdin closes (the test process went away).
"""
import collections
import os
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1  # we never look at payloads
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 16384  # packets held at once (queue overflow drops, like a router's tail drop)

queue, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000.0
seq = 0


def attr(kind, payload):
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def message(kind, attrs, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE (root): room for bursts
sock.bind((0, 0))


def configure(attrs):
    """Sends one config message and fails loudly if the kernel refuses it."""
    sock.send(message(NFQNL_MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK))
    reply = sock.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    err = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
    if err:
        sys.stderr.write(f"nfqueue config failed: {os.strerror(-err)}\n")
        sys.exit(1)


configure([attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))])
configure([attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)), attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))])
sock.setblocking(False)
print("ready", flush=True)

held = collections.deque()  # (release time, packet id), in arrival order


def receive(now):
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:  # ENOBUFS: the kernel dropped queued packets it could not hand us (counts as loss)
            continue
        at = 0
        while at + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, at)
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = at + 20  # nlmsghdr (16) + nfgenmsg (4)
                while a + 4 <= at + size:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        held.append((now + delay, struct.unpack_from("!I", data, a + 4)[0]))
                        break
                    a += (alen + 3) & ~3
            at += (size + 3) & ~3


while True:
    timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
    ready, _, _ = select.select([sock, sys.stdin], [], [], timeout)
    if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
        break
    now = time.monotonic()
    if sock in ready:
        receive(now)
    last = None
    while held and held[0][0] <= now:
        last = held.popleft()[1]
    if last is not None:
        sock.send(message(NFQNL_MSG_VERDICT_BATCH, [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))]))
