"""The gateway's HTTP/1.1 client for provider calls: aiohttp's connector and parser, without ``ClientSession``.

Why: ``ClientSession.request`` builds a ``ClientRequest`` and a ``ClientResponse`` per call, writes the
body from a task of its own and runs redirect, cookie, auth, proxy and trace logic the gateway never uses;
CPU-time profiles put it at ~25-29 % of the gateway's CPU. This module keeps everything that makes a
connection what it is — aiohttp's ``TCPConnector`` (the ``netguard`` checks after DNS and at connect, TLS
verification, the connect timeout, keep-alive pooling, aiohttp's connect error types) and its response
parser (``ResponseHandler`` with ``HttpResponseParser``: framing, chunked and content-length bodies,
gzip/deflate decoding, size limits) — and replaces only the request/response objects on top: the request
line, headers and body go out in one write, the response is the parsed message and its payload
``StreamReader``.

Private aiohttp APIs used (aiohttp is pinned in uv.lock; ``tests/test_upstream_client.py`` covers each,
including a byte-for-byte comparison of the request with what ``ClientSession`` sends):
``BaseConnector.connect`` with a ``ClientRequest`` (only its connection fields are read: one per origin,
kept), ``Connection.protocol`` / ``ResponseHandler.set_response_params`` / ``.read()``, and
``http_writer._serialize_headers`` (refuses CR/LF in header names and values).

Semantics kept from ``ClientSession``: the same default headers (``Host``, ``Accept: */*``,
``Accept-Encoding``, ``Content-Length``, ``Content-Type: application/octet-stream`` for a body without
one; no ``User-Agent``), no redirects, no cookies, and the retry-once rule of RFC 9112 §9.3.1 that
aiohttp applies: only an idempotent method is sent again after the connection broke before an answer
(``ServerDisconnectedError`` / ``ClientOSError``, never a connect error) — a POST never is. The connection
goes back to the pool when its body was read to the end and keep-alive allows; otherwise it is closed.
One difference: a header given twice under two spellings (``X-A`` / ``x-a``) goes out twice, as given;
``ClientSession`` kept only the last.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest, _gen_default_accept_encoding
from aiohttp.connector import Connection
from aiohttp.helpers import EMPTY_BODY_METHODS
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["UpstreamClient", "UpstreamResponse"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_ACCEPT_ENCODING = _gen_default_accept_encoding()
_READ_BUFSIZE = 2**16  # ClientSession's default
_MAX_ORIGINS = 256


class UpstreamResponse:
    """A response whose head has arrived: ``status``, ``headers``, and ``content`` (the body as it arrives,
    decoded when the upstream compressed it). ``release()`` or ``close()`` when done."""

    __slots__ = ("_conn", "_released", "content", "headers", "method", "reason", "status", "url")

    def __init__(self, method: str, url: URL, status: int, reason: str, headers: CIMultiDictProxy[str],
                 content: StreamReader, conn: Connection) -> None:
        self.method, self.url = method, url
        self.status, self.reason, self.headers, self.content = status, reason, headers, content
        self._conn: Connection | None = conn
        self._released = False
        content.on_eof(self._eof)

    def _eof(self) -> None:
        """The body was read to its end: the connection goes back to the pool (unless keep-alive is off:
        the connector checks ``Connection: close``, HTTP/1.0 and anything left unparsed)."""
        if (conn := self._conn) is not None:
            self._conn = None
            conn.release()

    def _notify_content(self) -> None:
        if not self._released:
            self._released = True
            if not self.content.is_eof() and self.content.exception() is None:
                self.content.set_exception(aiohttp.ClientConnectionError("Connection closed"))  # a reader still waiting wakes up

    def release(self) -> None:
        """Done with it: the connection is pooled if its body was read whole, closed otherwise."""
        self._notify_content()
        if (conn := self._conn) is not None:
            self._conn = None
            conn.release()

    def close(self) -> None:
        """Done with it, and the connection closes unless the body had already been read whole."""
        self._notify_content()
        if (conn := self._conn) is not None:
            self._conn = None
            conn.close()


class UpstreamClient:
    """Requests over an aiohttp connector; closing the client closes the connector."""

    def __init__(self, connector: aiohttp.BaseConnector, *, auto_decompress: bool = True) -> None:
        self.connector = connector
        self.auto_decompress = auto_decompress
        self._origins: OrderedDict[tuple[str, str, int | None], ClientRequest] = OrderedDict()
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        await self.connector.close()

    def _connect_key(self, url: URL) -> ClientRequest:
        """What the connector reads to pick or open a connection (scheme, host, port, TLS): one per origin."""
        key = (url.scheme, url.raw_host or "", url.port)
        req = self._origins.get(key)
        if req is None:
            req = ClientRequest("GET", url.origin(), loop=self._loop)
            self._origins[key] = req
            if len(self._origins) > _MAX_ORIGINS:
                self._origins.popitem(last=False)
        return req

    @staticmethod
    def _head(method: str, url: URL, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The request line and headers, as ``ClientSession`` would send them (its order and defaults)."""
        out: CIMultiDict[str] = CIMultiDict()
        if "Host" not in headers:
            host = url.host_port_subcomponent
            assert host is not None
            out["Host"] = host
            out.extend(headers)
        else:  # first, as ClientSession puts it (the last value wins)
            out["Host"] = headers.getall("Host")[-1]
            out.extend((k, v) for k, v in headers.items() if k.lower() != "host")
        if "Accept" not in out:
            out["Accept"] = "*/*"
        if "Accept-Encoding" not in out:
            out["Accept-Encoding"] = _ACCEPT_ENCODING
        if "Transfer-Encoding" in out:
            raise ValueError("Transfer-Encoding cannot be set on an upstream request: the body is sent whole")
        if "Content-Length" not in out:
            out["Content-Length"] = str(len(body))
        if "Content-Type" not in out:
            out["Content-Type"] = "application/octet-stream"
        return _serialize_headers(f"{method} {url.raw_path_qs} HTTP/1.1", out)

    async def request(self, method: str, url: URL, headers: CIMultiDict[str], body: bytes,
                      timeout: aiohttp.ClientTimeout, first_byte: float | None = None) -> UpstreamResponse:
        """Send one request and return once the response head is in. ``timeout.connect`` bounds getting a
        connection (pool wait, DNS, connect; no timer when a pooled one is free), ``timeout.sock_connect``
        the connect itself, ``first_byte`` the wait for the head once the request is written (TimeoutError).
        Other errors are aiohttp's: ``ClientConnectorError`` (DNS, refused, ``netguard``),
        ``ConnectionTimeoutError``, ``ServerDisconnectedError``, ``ClientOSError``, ``ClientResponseError``
        for an answer that is not HTTP."""
        method = method.upper()
        head = self._head(method, url, headers, body)
        req = self._connect_key(url)
        retry = method in IDEMPOTENT_METHODS
        while True:
            try:
                return await self._attempt(method, url, req, head, body, timeout, first_byte)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                raise
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if not retry:
                    raise
                retry = False  # a pooled connection the server had closed: once more, on a fresh one

    async def _attempt(self, method: str, url: URL, req: ClientRequest, head: bytes, body: bytes,
                       timeout: aiohttp.ClientTimeout, first_byte: float | None) -> UpstreamResponse:
        try:
            conn = await self.connector.connect(req, [], timeout)
        except TimeoutError as e:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}") from e
        # one timer that fails the protocol's read (an asyncio.timeout costs a Timeout object, its timer and
        # the task's cancel/uncancel bookkeeping per request); the connection is closed below
        timer = (self._loop.call_later(first_byte, _no_head, conn.protocol, first_byte)
                 if first_byte is not None else None)
        try:
            proto = conn.protocol
            assert proto is not None and proto.transport is not None
            proto.set_response_params(
                skip_payload=method in EMPTY_BODY_METHODS, read_until_eof=True,
                auto_decompress=self.auto_decompress, read_bufsize=_READ_BUFSIZE,
                timeout_ceil_threshold=self.connector._timeout_ceil_threshold,
            )
            if body:
                proto.transport.writelines((head, body))
            else:
                proto.transport.write(head)
            while True:
                try:
                    message, payload = await proto.read()
                except HttpProcessingError as e:
                    raise aiohttp.ClientResponseError(
                        aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url), (),
                        status=e.code, message=e.message, headers=e.headers) from e
                if not 100 <= message.code <= 199 or message.code == 101:
                    break
            return UpstreamResponse(method, url, message.code, message.reason, message.headers, payload, conn)
        except OSError as e:
            conn.close()
            if isinstance(e, aiohttp.ClientError) or (e.errno is None and isinstance(e, TimeoutError)):
                raise
            raise aiohttp.ClientOSError(*e.args) from e
        except BaseException:
            conn.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()


def _no_head(proto: ResponseHandler | None, after: float) -> None:
    if proto is not None:
        proto.set_exception(TimeoutError(f"no response head within {after:g}s"))
