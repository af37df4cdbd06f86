"""The transport under both sides of an association: TCP sockets, TLS
wrapping, quick ACKs, and reading whole PDUs.

Shared by the acceptor (:mod:`echoes.dicom.server`) and the requestor
(:mod:`echoes.dicom.requestor`), so neither imports the other.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct

log = logging.getLogger("echoes.association")

#: The largest PDU a peer may make us read into memory.
MAX_PDU_READ = 1 << 20
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


class PeerGone(Exception):
    """The connection closed, timed out or broke."""


class PeerTimedOut(PeerGone):
    """Nothing came within the socket's timeout (a requestor tells the admin so)."""


class QuickAckSocket(socket.socket):
    """A connection that acknowledges every read at once (Linux TCP_QUICKACK).

    A sender that leaves Nagle on (plain Debian dcmtk) holds its next small
    segment until our ACK arrives, and delayed ACK holds that ACK 40 ms: 200
    tiny objects took 10.1 s instead of 1.8 s.  QUICKACK is not sticky, so
    it is set again before every read.
    """

    def recv(self, size: int, flags: int = 0) -> bytes:  # type: ignore[override]
        _quickack(self)
        return super().recv(size, flags)

    def recv_into(self, buffer, size: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        _quickack(self)
        return super().recv_into(buffer, size, flags)


def _quickack(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
    except OSError:
        pass


def quick(sock: socket.socket) -> QuickAckSocket:
    """``sock`` as a QuickAckSocket with TCP_NODELAY (the same descriptor).

    NODELAY: without it every C-STORE waits ~40 ms for a delayed ACK (Nagle);
    QUICKACK on our reads spares a peer that leaves Nagle on.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())


def accepted(sock: socket.socket, read_timeout: float | None,
             ssl_context: ssl.SSLContext | None) -> socket.socket:
    """An accepted connection made ready for an association.

    Reads time out after ``read_timeout``: a peer that stops mid-PDU must not
    hold a thread (and one of max_associations) for ever.  With TLS the
    handshake happens on the association's own thread (first read), never
    in the accept loop: a silent peer must not stall accept().
    """
    client: socket.socket = quick(sock)
    client.settimeout(read_timeout)
    if ssl_context is not None:
        client = ssl_context.wrap_socket(client, server_side=True,
                                         do_handshake_on_connect=False)
    return client


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to a peer, reads bounded by ``timeout``; OSError if none."""
    sock: socket.socket = quick(socket.create_connection((host, port), timeout=timeout))
    sock.settimeout(timeout)
    return sock


def client_tls(sock: socket.socket, ssl_context: ssl.SSLContext | None) -> socket.socket:
    """``sock`` after the TLS handshake as a client (unchanged without a context)."""
    return sock if ssl_context is None else ssl_context.wrap_socket(sock)


class PDUReader:
    """Reads whole PDUs from a socket into one reusable buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray(1 << 16)
        self.header = bytearray(6)

    def _fill(self, view: memoryview) -> None:
        sock = self.sock
        # The socket is a QuickAckSocket: every read acknowledges at once.
        while view:
            try:
                count = sock.recv_into(view)
            except TimeoutError:
                raise PeerTimedOut("timed out") from None
            except OSError as exc:
                raise PeerGone(str(exc) or type(exc).__name__) from None
            if not count:
                raise PeerGone("connection closed")
            view = view[count:]

    def read(self) -> tuple[int, memoryview]:
        """The next PDU: (type, body)."""
        self._fill(memoryview(self.header))
        kind, length = self.header[0], struct.unpack_from(">I", self.header, 2)[0]
        if length > MAX_PDU_READ:
            log.warning("dropping a peer that announced a %d-byte PDU (limit %d)",
                        length, MAX_PDU_READ)
            raise PeerGone(f"PDU of {length} bytes refused")
        if length > len(self.buffer):
            self.buffer = bytearray(length)
        body = memoryview(self.buffer)[:length]
        self._fill(body)
        return kind, body
