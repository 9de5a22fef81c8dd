"""The gateway's upstream client (``aigw_gateway.upstream``) against real servers, raw asyncio ones where they
must misbehave: the bytes it sends (the same as ``ClientSession`` sent), framing and decoding of what comes
back, keep-alive reuse and when a connection must not be reused, timeouts, and the retry-once rule (an
idempotent request is sent again on a fresh connection when a pooled one turns out closed; a POST never is)."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from aigw_common import netguard
from aigw_gateway.upstream import UpstreamClient, UpstreamResponse

TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An HTTP/1.1 server written by hand: each connection runs ``handler``; requests seen are kept whole."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # head + body of each request, as received
        self.server: asyncio.Server | None = None
        self.closed = asyncio.Event()  # set when a connection's peer (the client) closed it

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, ssl=ssl_ctx)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, path: str = "/v1/x", scheme: str = "http") -> URL:
        return URL(f"{scheme}://127.0.0.1:{self.port}{path}")

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed.set()
            return None
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":", 1)[1])
        body = await reader.readexactly(n)
        self.requests.append(head + body)
        return head + body

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def answer(status: str = "200 OK", body: bytes = b"", headers: tuple[str, ...] = ()) -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{h}\r\n" for h in headers)
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def serve_each(*responses: bytes) -> Handler:
    """Answer the requests of a connection in turn, keep-alive, then keep answering with the last one."""

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while await srv.read_request(reader) is not None:
            writer.write(responses[min(i, len(responses) - 1)])
            await writer.drain()
            i += 1

    return handler


@pytest.fixture
async def servers() -> AsyncIterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for s in made:
        await s.close()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(netguard.upstream_connector(["loopback"], limit=0, limit_per_host=0))
    yield c
    await c.close()


async def raw(servers: list[RawServer], handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> RawServer:
    s = RawServer(handler)
    await s.start(ssl_ctx)
    servers.append(s)
    return s


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.content.readany():
        parts.append(chunk)
    return b"".join(parts)


# ------------------------------------------------------------------ what goes out


@pytest.mark.parametrize(("method", "headers", "body"), [
    ("POST", [("Content-Type", "application/json"), ("Authorization", "Bearer sk-x"),
              ("Accept-Encoding", "identity")], b'{"model":"m"}'),
    ("POST", [("X-Api-Key", "k"), ("anthropic-version", "2023-06-01")], b"{}"),
    ("GET", [], b""),
    ("GET", [("Accept", "application/json"), ("Host", "api.example.test")], b""),
    ("DELETE", [("anthropic-beta", "a"), ("anthropic-beta", "b")], b""),
])
async def test_request_bytes_are_what_client_session_sent(servers: list[RawServer], client: UpstreamClient,
                                                          method: str, headers: list[tuple[str, str]], body: bytes) -> None:
    srv = await raw(servers, serve_each(answer(body=b"ok")))
    url = srv.url("/v1/chat/completions?api-version=2024-10-21&x=%2F")
    h: CIMultiDict[str] = CIMultiDict()
    for k, v in headers:
        h.add(k, v)
    async with aiohttp.ClientSession(connector=netguard.upstream_connector(["loopback"]), auto_decompress=True,
                                     skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.request(method, url, headers=h, data=body, timeout=TIMEOUT, allow_redirects=False) as r:
            assert await r.read() == b"ok"
    resp = await client.request(method, url, h, body, TIMEOUT)
    assert await read_all(resp) == b"ok"
    resp.close()
    assert len(srv.requests) == 2
    assert srv.requests[1] == srv.requests[0], srv.requests


async def test_repeated_headers_all_go_out(servers: list[RawServer], client: UpstreamClient) -> None:
    """Where ClientSession kept only the last of two spellings of one name (``X-Trace`` / ``x-trace``)."""
    srv = await raw(servers, serve_each(answer()))
    h: CIMultiDict[str] = CIMultiDict([("X-Trace", "a"), ("x-trace", "b")])
    (await client.request("POST", srv.url(), h, b"", TIMEOUT)).close()
    assert b"\r\nX-Trace: a\r\nx-trace: b\r\n" in srv.requests[0]


async def test_header_injection_is_refused_before_anything_is_sent(servers: list[RawServer],
                                                                   client: UpstreamClient) -> None:
    srv = await raw(servers, serve_each(answer()))
    with pytest.raises(ValueError):
        await client.request("POST", srv.url(), CIMultiDict({"X-A": "v\r\nX-Injected: 1"}), b"", TIMEOUT)
    with pytest.raises(ValueError):
        await client.request("POST", srv.url(), CIMultiDict({"Transfer-Encoding": "chunked"}), b"x", TIMEOUT)
    await asyncio.sleep(0.05)
    assert srv.connections == 0


# ------------------------------------------------------------------ what comes back


async def test_content_length_body_and_keep_alive_reuse(servers: list[RawServer], client: UpstreamClient) -> None:
    srv = await raw(servers, serve_each(answer(body=b'{"a":1}', headers=("Content-Type: application/json",))))
    for _ in range(3):
        resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert await read_all(resp) == b'{"a":1}'
        resp.close()  # after a whole body: the connection is already back in the pool
    assert srv.connections == 1
    assert len(srv.requests) == 3


async def test_chunked_body_arrives_chunk_by_chunk(servers: list[RawServer], client: UpstreamClient) -> None:
    go = asyncio.Event()

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"7\r\ndata: 1\r\n")
            await writer.drain()
            await go.wait()
            writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
            await writer.drain()

    srv = await raw(servers, handler)
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    assert await resp.content.readany() == b"data: 1"  # before the rest was even written
    go.set()
    assert await read_all(resp) == b"data: 2"
    resp.close()
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)  # pooled after the last chunk
    assert await read_all(resp) == b"data: 1data: 2"
    resp.close()
    assert srv.connections == 1


@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
])
async def test_compressed_bodies_are_decoded(servers: list[RawServer], client: UpstreamClient, encoding: str,
                                             encode: Callable[[bytes], bytes]) -> None:
    data = b'{"usage":{"prompt_tokens":3}}' * 50
    srv = await raw(servers, serve_each(answer(body=encode(data), headers=(f"Content-Encoding: {encoding}",))))
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    assert resp.headers["Content-Encoding"] == encoding
    assert await read_all(resp) == data
    resp.close()


@pytest.mark.parametrize(("method", "status"), [("POST", "204 No Content"), ("GET", "304 Not Modified"),
                                                ("HEAD", "200 OK")])
async def test_answers_without_a_body(servers: list[RawServer], client: UpstreamClient, method: str,
                                      status: str) -> None:
    # a HEAD answer's Content-Length describes the body a GET would get: none follows
    head = answer(status, headers=("Content-Length: 42",) if method == "HEAD" else ("ETag: x",))
    srv = await raw(servers, serve_each(head, answer(body=b"next")))
    resp = await client.request(method, srv.url(), CIMultiDict(), b"", TIMEOUT)
    assert resp.status == int(status.split()[0])
    assert await read_all(resp) == b""
    resp.close()
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)  # same connection, next answer
    assert await read_all(resp) == b"next"
    resp.close()
    assert srv.connections == 1


async def test_connection_close_is_not_reused(servers: list[RawServer], client: UpstreamClient) -> None:
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is not None:
            writer.write(answer(body=b"bye", headers=("Connection: close",)))
            await writer.drain()
            await asyncio.sleep(0.5)  # keeps its end open a while: the client must not send again on it

    srv = await raw(servers, handler)
    for _ in range(2):
        resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
        assert await read_all(resp) == b"bye"
        resp.close()
    assert srv.connections == 2
    assert len(srv.requests) == 2


async def test_http_1_0_answer_read_to_eof(servers: list[RawServer], client: UpstreamClient) -> None:
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    srv = await raw(servers, handler)
    resp = await client.request("GET", srv.url(), CIMultiDict(), b"", TIMEOUT)
    assert await read_all(resp) == b"until the end"
    resp.close()


async def test_upstream_closing_mid_body_is_a_payload_error(servers: list[RawServer], client: UpstreamClient) -> None:
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()

    srv = await raw(servers, handler)
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all(resp)
    resp.close()


async def test_not_http_is_a_client_error(servers: list[RawServer], client: UpstreamClient) -> None:
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    srv = await raw(servers, handler)
    with pytest.raises(aiohttp.ClientResponseError):
        await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)


async def test_release_with_an_unread_body_closes_the_connection(servers: list[RawServer],
                                                                 client: UpstreamClient) -> None:
    srv = await raw(servers, serve_each(answer(body=b"x" * 300_000)))
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    await resp.content.readany()
    resp.release()  # not read to the end: the rest is still coming, so this connection cannot carry another
    with pytest.raises(aiohttp.ClientConnectionError):
        await read_all(resp)
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    assert len(await read_all(resp)) == 300_000
    resp.close()
    assert srv.connections == 2


# ------------------------------------------------------------------ when nothing, or the wrong thing, happens


async def test_an_upstream_that_never_answers_times_out_and_the_connection_is_closed(
        servers: list[RawServer], client: UpstreamClient) -> None:
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await srv.read_request(reader)  # returns when the client gives up and closes

    srv = await raw(servers, handler)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT)
    async with asyncio.timeout(5):
        await srv.closed.wait()


async def test_first_byte_timeout_fails_the_request_and_closes_the_connection(
        servers: list[RawServer], client: UpstreamClient) -> None:
    """``first_byte``: no head in time is a TimeoutError from the request itself (no outer timeout), the
    connection is closed, and the next request gets a fresh one and its answer."""
    answer = asyncio.Event()

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            if answer.is_set():
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    srv = await raw(servers, handler)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError) as e:
        await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT, first_byte=0.2)
    assert 0.15 <= loop.time() - t0 < 2.0
    assert not isinstance(e.value, aiohttp.ClientError)  # not a connect timeout: the request was sent
    async with asyncio.timeout(5):
        await srv.closed.wait()
    answer.set()
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT, first_byte=5)
    assert resp.status == 200 and await resp.content.read() == b"ok"
    resp.release()
    assert srv.connections == 2


async def test_a_head_in_time_cancels_the_first_byte_timer(servers: list[RawServer], client: UpstreamClient) -> None:
    """The timer ends with the head: a body that takes longer than ``first_byte`` still arrives whole."""
    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
        await writer.drain()
        await asyncio.sleep(0.4)
        writer.write(b"2\r\ncd\r\n0\r\n\r\n")
        await writer.drain()
        await srv.read_request(reader)

    srv = await raw(servers, handler)
    resp = await client.request("POST", srv.url(), CIMultiDict(), b"{}", TIMEOUT, first_byte=0.1)
    assert await resp.content.read() == b"abcd"
    resp.release()


async def test_connect_timeout(client: UpstreamClient) -> None:
    # a listener whose backlog is full: connects hang (SYNs unanswered) rather than being refused
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        t = aiohttp.ClientTimeout(total=None, sock_connect=0.3, sock_read=None)
        with pytest.raises(TimeoutError) as e:
            await client.request("GET", URL(f"http://127.0.0.1:{port}/"), CIMultiDict(), b"", t)
        assert isinstance(e.value, aiohttp.ClientError)  # ConnectionTimeoutError: both, as from ClientSession
    finally:
        for f in fillers:
            f.close()
        lsock.close()


async def test_refused_connection_and_forbidden_address() -> None:
    c = UpstreamClient(netguard.upstream_connector([]))  # loopback not allowed
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as e:
            await c.request("POST", URL("http://127.0.0.1:9/"), CIMultiDict(), b"{}", TIMEOUT)
        forbidden = netguard.forbidden_cause(e.value)
        assert forbidden is not None and forbidden.klass == "loopback"
    finally:
        await c.close()
    c = UpstreamClient(netguard.upstream_connector(["loopback"]))
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as e:
            await c.request("POST", URL("http://127.0.0.1:9/"), CIMultiDict(), b"{}", TIMEOUT)
        assert netguard.forbidden_cause(e.value) is None
    finally:
        await c.close()


def _self_signed(dirpath: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (dirpath / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dirpath / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(dirpath / "c.pem", dirpath / "k.pem")
    return ctx


async def test_tls_certificates_are_verified(servers: list[RawServer], client: UpstreamClient) -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = await raw(servers, serve_each(answer(body=b"secret")), _self_signed(Path(d)))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client.request("POST", srv.url(scheme="https"), CIMultiDict(), b"{}", TIMEOUT)
    assert srv.requests == []


# ------------------------------------------------------------------ a pooled connection the server had closed


def close_on_second_request() -> Handler:
    """Answers the first request of each connection keep-alive; on the second, closes without answering
    (a server's keep-alive timeout racing the client's next request)."""

    async def handler(srv: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is None:
            return
        writer.write(answer(body=b"first"))
        await writer.drain()
        await srv.read_request(reader)  # and close without answering: the client sees EOF

    return handler


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_idempotent_request_is_sent_again_on_a_fresh_connection(servers: list[RawServer],
                                                                      client: UpstreamClient, method: str) -> None:
    srv = await raw(servers, close_on_second_request())
    resp = await client.request(method, srv.url(), CIMultiDict(), b"", TIMEOUT)
    assert await read_all(resp) == b"first"
    resp.close()
    resp = await client.request(method, srv.url(), CIMultiDict(), b"", TIMEOUT)
    assert await read_all(resp) == b"first"  # answered on a second connection
    resp.close()
    assert srv.connections == 2
    assert len(srv.requests) == 3


async def test_post_is_never_sent_twice(servers: list[RawServer], client: UpstreamClient) -> None:
    srv = await raw(servers, close_on_second_request())
    resp = await client.request("POST", srv.url(), CIMultiDict(), b'{"n":1}', TIMEOUT)
    assert await read_all(resp) == b"first"
    resp.close()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.request("POST", srv.url(), CIMultiDict(), b'{"n":2}', TIMEOUT)
    assert len(srv.requests) == 2  # it may have reached the upstream: it is not sent again
    assert srv.connections == 1
