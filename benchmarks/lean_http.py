"""A minimal HTTP/1.1 keep-alive client for load generators.

The load generator shares the machine's cores with the service, the fake upstream and the
database, so every millisecond of CPU it spends per request is taken from what it measures.
httpx costs about 1 ms of CPU per request here; this client, one connection per simulated user,
a tenth of that. It speaks only what the benchmarks need: requests with a JSON body, answers
with a Content-Length or chunked body.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import msgspec

_encoder = msgspec.json.Encoder()


class LeanConnection:
    """One keep-alive connection to ``base_url``; reopened after an error."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.prefix = url.path.rstrip("/")
        fixed = {"host": f"{self.host}:{self.port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: object = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request (``body`` as JSON); the answer's status, headers (lower-case) and
        body. Raises OSError or asyncio.IncompleteReadError if the connection fails."""
        try:
            return await self._request(method, path, body)
        except BaseException:
            await self.close()
            raise

    async def _request(
        self, method: str, path: str, body: object
    ) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        content = b"" if body is None else _encoder.encode(body)
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode() + self._fixed
        if body is not None:
            head += b"content-type: application/json\r\n"
        head += b"content-length: %d\r\n\r\n" % len(content)
        self._writer.write(head + content)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = await self._chunked()
        else:
            payload = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, payload

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        pieces = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(pieces)
            pieces.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = None
