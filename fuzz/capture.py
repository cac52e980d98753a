#!/usr/bin/env python3
"""Record real PostgreSQL traffic as seed corpora for the fuzz targets.

A transparent TCP relay between clients (psql, pgbench, drivers) and a server: every byte is
forwarded unchanged and also recorded, per connection and direction. When the relay is stopped
(SIGINT/SIGTERM) it writes the corpus files:

  corpus/startup/   the first packet of each client connection (StartupMessage, SSLRequest, ...)
  corpus/frame/     client and server streams after startup, cut at frame boundaries into
                    pieces of at most 4 KiB (libFuzzer's default input size), after the
                    two control bytes the frame target reads first
  corpus/messages/  single whole frames, one of each distinct (direction, tag) seen first
  corpus/classify/  the SQL text of every distinct Query and Parse message
  corpus/session/   a conversation as the session target's records (direction, tag, u16
                    length, body): the client's frames up to each Sync or Query, then the
                    server's up to the ReadyForQuery that answers it, at most 4 KiB each

Usage: fuzz/capture.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT OUT_DIR
Loopback only; point clients at 127.0.0.1:LISTEN_PORT with sslmode=disable.
"""
import hashlib
import os
import selectors
import signal
import socket
import struct
import sys

MAX_PIECE = 4096
# Pieces kept per connection and direction (a COPY of 100,000 rows need not be kept whole).
MAX_PIECES = 12


def save(out: str, kind: str, data: bytes, budget: list | None = None) -> None:
    if not data:
        return
    if budget is not None:
        if budget[0] <= 0:
            return
        budget[0] -= 1
    d = os.path.join(out, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def frames(stream: bytes):
    """Whole tagged frames (tag, len word, body) of a stream; stops at a partial one."""
    i = 0
    while i + 5 <= len(stream):
        (n,) = struct.unpack(">I", stream[i + 1:i + 5])
        if n < 4 or i + 1 + n > len(stream):
            return
        yield stream[i:i + 1 + n]
        i += 1 + n


def record(direction: int, frame: bytes) -> bytes:
    body = frame[5:][:65535]
    return bytes([direction, frame[0]]) + struct.pack(">H", len(body)) + body


def save_session(out: str, up: bytes, down: bytes) -> None:
    replies = list(frames(down))
    budget = [MAX_PIECES]
    piece = b""
    for frame in frames(up):
        piece += record(0, frame)
        if frame[:1] in (b"S", b"Q", b"F"):
            while replies:
                reply = replies.pop(0)
                if len(piece) < MAX_PIECE:
                    piece += record(1, reply)
                if reply[:1] == b"Z":
                    break
        if len(piece) >= MAX_PIECE:
            save(out, "session", piece, budget)
            piece = b""
    save(out, "session", piece, budget)


def write_corpus(out: str, conns: list) -> None:
    seen_tags = set()
    for up, down in conns:
        if len(up) < 8:
            continue
        # The client's opening: an SSLRequest answered 'N', then the StartupMessage.
        rest = up
        while len(rest) >= 8:
            (n,) = struct.unpack(">I", rest[:4])
            if n < 8 or n > len(rest):
                break
            save(out, "startup", rest[:n])
            code = struct.unpack(">I", rest[4:8])[0]
            rest = rest[n:]
            if code >> 16 == 3:
                break
        # The server's side starts after its one-byte answer to an SSLRequest, if any.
        if down[:1] in (b"N", b"S"):
            down = down[1:]
        save_session(out, rest, down)
        for direction, stream in (("client", rest), ("server", down)):
            piece = b""
            budget = [MAX_PIECES]
            # The frame target's first two bytes choose the inspected tags and the read size.
            prefix = b"\x05\x11" if direction == "client" else b"\x02\x1f"
            for frame in frames(stream):
                key = (direction, frame[0])
                if key not in seen_tags and len(frame) <= MAX_PIECE:
                    seen_tags.add(key)
                    save(out, "messages", frame)
                if direction == "client" and frame[:1] in (b"Q", b"P"):
                    body = frame[5:]
                    if frame[:1] == b"P":
                        body = body[body.index(b"\0") + 1:]
                    sql = body.split(b"\0", 1)[0]
                    if len(sql) <= MAX_PIECE:
                        save(out, "classify", sql)
                if piece and len(piece) + len(frame) > MAX_PIECE:
                    save(out, "frame", prefix + piece, budget)
                    piece = b""
                piece += frame[:MAX_PIECE]
            save(out, "frame", prefix + piece, budget)


def main() -> None:
    listen_port, up_host, up_port, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sel = selectors.DefaultSelector()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(64)
    sel.register(lsock, selectors.EVENT_READ, None)
    conns = []  # [client->server bytes, server->client bytes]
    peers = {}  # socket -> (other socket, record, index)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        for key, _ in sel.select(timeout=0.2):
            if key.fileobj is lsock:
                c, _ = lsock.accept()
                s = socket.create_connection((up_host, up_port))
                rec = [bytearray(), bytearray()]
                conns.append(rec)
                peers[c] = (s, rec, 0)
                peers[s] = (c, rec, 1)
                sel.register(c, selectors.EVENT_READ, None)
                sel.register(s, selectors.EVENT_READ, None)
                continue
            sock = key.fileobj
            if sock not in peers:  # closed with its peer earlier in this batch
                continue
            other, rec, idx = peers[sock]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                for x in (sock, other):
                    if x in peers:
                        sel.unregister(x)
                        del peers[x]
                        x.close()
                continue
            rec[idx] += data
            other.sendall(data)
    write_corpus(out, [(bytes(a), bytes(b)) for a, b in conns])


if __name__ == "__main__":
    main()
