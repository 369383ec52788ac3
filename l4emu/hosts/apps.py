"""The applications behind emulated sockets: a fixed HTTP answer naming the backend, echo, or discard.

An app sees a byte stream (TCP) or datagrams (UDP), never packets: the TCP responder hands it what
arrived in order and sends what it returns, so the apps stay as simple as a real server's loop.
"""

from __future__ import annotations

MAX_HEADER_BYTES = 64 << 10  # a request header block larger than this is refused (431), as servers do
MAX_BODY_BYTES = 1 << 30


class StreamApp:
    """One accepted connection's application: data in, (reply bytes, close after sending) out."""

    def __init__(self, name: str):
        self.name = name  # "10.1.0.2:8080": the backend, for answers that name it

    def on_data(self, data: bytes) -> tuple[bytes, bool]:
        raise NotImplementedError

    def on_eof(self) -> tuple[bytes, bool]:
        """The peer closed its side: every app here closes too (no half-duplex servers)."""
        return b"", True


class Echo(StreamApp):
    def on_data(self, data):
        return data, False


class Discard(StreamApp):
    def on_data(self, data):
        return b"", False


class Http(StreamApp):
    """HTTP/1.1: answers each complete request (header block, then Content-Length body) with
    200 and "served by <backend>"; keeps the connection unless the request says close or is HTTP/1.0."""

    def __init__(self, name: str):
        super().__init__(name)
        self.buffer = b""
        self.body_left = 0
        self.closing = False

    def on_data(self, data):
        if self.closing:
            return b"", False
        self.buffer += data
        out = []
        while True:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.body_left -= taken
                self.buffer = self.buffer[taken:]
                if self.body_left:
                    break
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    out.append(self.response(431, "Request Header Fields Too Large", close=True))
                break
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            reply, length = self.answer(head)
            out.append(reply)
            if self.closing:
                break
            self.body_left = length
        return b"".join(out), self.closing

    def answer(self, head: str) -> tuple[bytes, int]:
        """The reply to one header block and the length of the body that follows it."""
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self.response(400, "Bad Request", close=True), 0
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return self.response(400, "Bad Request", close=True), 0
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return self.response(400, "Bad Request", close=True), 0
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (parts[2] == "HTTP/1.0" and connection != "keep-alive")
        return self.response(200, "OK", close), int(length)

    def response(self, code: int, reason: str, close: bool) -> bytes:
        self.closing = self.closing or close
        body = f"served by {self.name}\n".encode()
        return (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode() + body


STREAM_APPS = {"http": Http, "echo": Echo, "discard": Discard}


def datagram_answer(app: str, name: str, payload: bytes) -> bytes | None:
    """A UDP socket's answer to one datagram: echo it, name the backend ("http": a fixed text), or nothing."""
    if app == "echo":
        return payload
    if app == "http":
        return f"served by {name}\n".encode()
    return None
