"""streamq.dashboard over HTTP, called as an ASGI app (no server, no extra dependency), against a real
Redis with data made by real workers: every page, authentication, CSRF, writes refused unless allowed, the
escaping of hostile dead letters, shared reads, and the `streamq dashboard` command's refusals."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import redis.asyncio
from helpers import async_wait_until

import streamq
from streamq import keys
from streamq.cli import main
from streamq.control import pause, pauses
from streamq.dashboard import _app as dashboard_app
from streamq.dashboard import create_app
from streamq.dashboard._app import DashboardApp
from streamq.deadletter import DeadLetters
from streamq.errors import ConfigurationError
from streamq.exit_codes import OK, USAGE


class Invoice(streamq.Event, tag="test.dashboard.invoice"):
    n: int
    customer: str = "acme"


FAST: dict[str, Any] = {"lease_ms": 1_000, "block_ms": 100, "retry_base_ms": 0, "retention": False}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
TOKEN = "s3cret-token-for-tests"


# ---------------------------------------------------------------------------------------------- client


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name, []))


class AsgiClient:
    """Calls an ASGI app the way a server would: one request, the whole response."""

    def __init__(self, app: Any, root_path: str = "") -> None:
        self.app = app
        self.root_path = root_path
        self.cookies: dict[str, str] = {}

    async def request(
        self, method: str, target: str, *, form: dict[str, str | Sequence[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:  # fmt: skip
        parts = urlsplit(target)
        sent = {"host": "testserver", **(headers or {})}
        body = b""
        if form is not None:
            pairs = [(k, v) for k, vs in form.items() for v in ([vs] if isinstance(vs, str) else vs)]
            body = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs).encode()
            sent["content-type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            sent["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": unquote(parts.path), "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(), "root_path": self.root_path,
            "headers": [(k.lower().encode(), v.encode()) for k, v in sent.items()],
            "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        }  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent_back: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent_back.append(message)

        await self.app(scope, receive, send)
        start = sent_back[0]
        found: dict[str, list[str]] = {}
        for name, value in start["headers"]:
            found.setdefault(name.decode().lower(), []).append(value.decode("latin-1"))
        for cookie in found.get("set-cookie", []):
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";")[0]
        return Reply(start["status"], found, b"".join(m.get("body", b"") for m in sent_back[1:]))

    async def get(self, target: str, **kwargs: Any) -> Reply:
        return await self.request("GET", target, **kwargs)

    async def post(self, target: str, form: dict[str, str | Sequence[str]], **kwargs: Any) -> Reply:
        return await self.request("POST", target, form=form, **kwargs)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BEARER = {"authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    stream: str
    rejected: list[int]  # invoice numbers group billing dead-lettered (reason rejected)
    failed: list[int]  # numbers billing dead-lettered after max_attempts (a raised error)
    garbage_dlq: str  # the dead letter of an undecodable payload


async def make_data(url: str, client: redis.asyncio.Redis, stream: str) -> Data:
    """Invoices 0-9 through groups billing and audit: billing rejects 2 and 5, fails 7 until it is
    dead-lettered (max_attempts=2); audit takes all. One garbage entry is dead-lettered by both."""
    async with streamq.Producer(url) as producer:
        await producer.publish_many(stream, [Invoice(n) for n in range(10)])
    await client.xadd(stream, {"d": b"\xc1\x00 not msgpack"})
    app = streamq.App(url)

    @app.consumer(stream, group="billing", max_attempts=2, **FAST)
    async def bill(event: Invoice) -> None:
        if event.n in (2, 5):
            raise streamq.Reject(f"cannot bill invoice {event.n}")
        if event.n == 7:
            raise RuntimeError("ledger unavailable")

    @app.consumer(stream, group="audit", **FAST)
    async def audit(event: Invoice) -> None:
        pass

    await asyncio.wait_for(app.run_until_idle(), 30)
    letters = await DeadLetters(client).list(stream)
    garbage = next(d.dlq_id for d in letters if d.reason == "undecodable" and d.group == "billing")
    return Data(stream=stream, rejected=[2, 5], failed=[7], garbage_dlq=garbage)


@pytest.fixture
async def data(redis_url: str, client: redis.asyncio.Redis, unique: str) -> Data:
    return await make_data(redis_url, client, unique)


@pytest.fixture
async def reader(redis_url: str, data: Data) -> Any:
    app = create_app(redis_url, streams=[data.stream])
    yield AsgiClient(app)
    await app.aclose()


@pytest.fixture
async def writer(redis_url: str, data: Data) -> Any:
    app = create_app(redis_url, streams=[data.stream], allow_writes=True, basic_auth=("ops", "pw"))
    yield AsgiClient(app)
    await app.aclose()


# ---------------------------------------------------------------------------------------------- pages


async def test_overview_shows_each_stream_and_group_with_its_figures(reader: AsgiClient, data: Data) -> None:
    """The overview lists the stream (length, dead letters) and each group (lag, pending, retries
    waiting, its dead-letter count linking to the browser filtered by the group)."""
    reply = await reader.get("/")
    assert reply.status == 200
    page = reply.text
    assert f">{data.stream}</a>" in page
    assert ">billing " in page and ">audit " in page
    # billing: 2 rejected + 1 failed + 1 garbage; audit: the garbage entry
    assert f'href="/stream/{data.stream}/dead-letters?group=billing">4</a>' in page
    assert f'href="/stream/{data.stream}/dead-letters?group=audit">1</a>' in page
    assert "<span>length</span><b>11</b>" in page
    assert '<span>dead letters</span><b><a href="/stream/' in page


async def test_paused_groups_and_scheduled_events_are_shown(
    redis_url: str, client: redis.asyncio.Redis, reader: AsgiClient, data: Data
) -> None:
    await pause(client, data.stream, "billing", reason="ledger migration")
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(data.stream, Invoice(99), delay_ms=3_600_000)
    reader.app.reads.clear()
    page = (await reader.get("/")).text
    assert 'class="badge paused" title="paused since' in page and "ledger migration" in page
    assert "<span>scheduled</span><b>1</b>" in page


async def test_oldest_pending_age_and_each_consumers_leases(
    redis_url: str, client: redis.asyncio.Redis, reader: AsgiClient, data: Data
) -> None:
    """Entries a consumer holds show as its leases on the stream page, and the group's oldest pending
    entry has an age on the overview."""
    async with streamq.Producer(redis_url) as producer:
        held = await producer.publish_many(data.stream, [Invoice(100), Invoice(101)])
    await client.xreadgroup("audit", "holder-1", {data.stream: ">"}, count=2)
    page = (await reader.get(f"/stream/{data.stream}")).text
    assert "holder-1" in page
    for entry_id in held:
        assert f'<span class="lease" title="delivered 1x, from the stream stream">{entry_id} (' in page
    overview = (await reader.get("/")).text
    row = re.search(r">audit </td>(.*?)</tr>", overview, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert cells[1] == "2"  # pending
    assert re.fullmatch(r"\d+(ms|\.\d+s)|\d+m \d+s", cells[2]), cells[2]  # oldest pending: an age


async def test_rates_are_drawn_from_the_samples_of_successive_reads(
    redis_url: str, client: redis.asyncio.Redis, data: Data
) -> None:
    """Each read is a sample: once two reads have seen the counters move, the charts draw a line."""
    app = create_app(redis_url, streams=[data.stream], refresh_ms=100)
    viewer = AsgiClient(app)
    first = (await viewer.get("/")).text
    assert "<polyline" not in first and "not enough samples yet" in first
    async with streamq.Producer(redis_url) as producer:
        await producer.publish_many(data.stream, [Invoice(n) for n in range(20, 30)])

    async def charted() -> bool:
        return "<polyline" in (await viewer.get("/")).text

    await async_wait_until(charted, message="a chart with two samples")
    await app.aclose()


async def test_dead_letter_browser_filters_by_group_and_reason(reader: AsgiClient, data: Data) -> None:
    every = (await reader.get(f"/stream/{data.stream}/dead-letters")).text
    assert every.count('class="letter"') == 5
    billing = (await reader.get(f"/stream/{data.stream}/dead-letters?group=billing")).text
    assert billing.count('class="letter"') == 4
    rejected = (await reader.get(f"/stream/{data.stream}/dead-letters?group=billing&reason=rejected")).text
    assert rejected.count('class="letter"') == 2
    assert rejected.count('<span class="badge">rejected</span>') == 2
    assert '<option value="rejected" selected>' in rejected
    tried = (await reader.get(f"/stream/{data.stream}/dead-letters?reason=max_attempts")).text
    assert tried.count('class="letter"') == 1 and "ledger unavailable" in tried


async def test_a_dead_letter_shows_its_error_traceback_attempts_and_decoded_payload(
    reader: AsgiClient, data: Data
) -> None:
    listing = (await reader.get(f"/stream/{data.stream}/dead-letters?reason=max_attempts")).text
    link = re.search(r'<a class="letter" href="([^"]+)">', listing)
    assert link is not None
    page = (await reader.get(link.group(1))).text
    assert "RuntimeError: ledger unavailable" in page
    assert "<h2>Traceback</h2>" in page and "Traceback (most recent call last)" in page
    assert "<dt>attempts</dt><dd>2</dd>" in page
    assert f"{__name__}.Invoice" in page  # decoded as its class, which this process imports
    assert "&quot;n&quot;: 7" in page and "<h3>raw bytes</h3>" in page


async def test_an_undecodable_payload_is_shown_as_raw_bytes(reader: AsgiClient, data: Data) -> None:
    page = (await reader.get(f"/stream/{data.stream}/dead-letters/{data.garbage_dlq}")).text
    assert "not msgpack, 14 bytes" in page
    assert "00000000  c1 00 20 6e 6f 74 20 6d 73 67 70 61 63 6b" in page


async def test_payloads_of_unknown_classes_are_shown_as_plain_msgpack(
    redis_url: str, client: redis.asyncio.Redis, data: Data
) -> None:
    app = create_app(redis_url, streams=[data.stream], event_types=[])
    letters = await DeadLetters(client).list(data.stream, group="billing")
    letter = next(d for d in letters if d.reason == "rejected")
    page = (await AsgiClient(app).get(f"/stream/{data.stream}/dead-letters/{letter.dlq_id}")).text
    assert "msgpack, no importable event class" in page and "test.dashboard.invoice" in page
    await app.aclose()


async def test_hostile_dead_letters_are_escaped_everywhere(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    """A payload, an error and a traceback carrying markup are shown as text on every page."""
    async with streamq.Producer(redis_url) as producer:
        await producer.publish(unique, Invoice(1, customer=HOSTILE))
    await client.xadd(unique, {"d": HOSTILE.encode()})
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", max_attempts=1, **FAST)
    async def handle(event: Invoice) -> None:
        raise ValueError(HOSTILE)

    await asyncio.wait_for(app.run_until_idle(), 30)
    dashboard = create_app(redis_url, streams=[unique])
    viewer = AsgiClient(dashboard)
    pages = [(await viewer.get("/")).text, (await viewer.get(f"/stream/{unique}/dead-letters")).text]
    for letter in await DeadLetters(client).list(unique):
        pages.append((await viewer.get(f"/stream/{unique}/dead-letters/{letter.dlq_id}")).text)
        pages.append((await viewer.get(f"/where?stream={unique}&id={letter.id}")).text)
    assert len(pages) == 6
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
    assert any("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page for page in pages[2:])
    assert "&lt;script&gt;alert" in pages[1]  # the error column of the listing
    await dashboard.aclose()


async def test_where_is_my_event(
    redis_url: str, client: redis.asyncio.Redis, reader: AsgiClient, data: Data
) -> None:
    async with streamq.Producer(redis_url) as producer:
        waiting = await producer.publish(data.stream, Invoice(200))
    page = (await reader.get(f"/where?stream={data.stream}&id={waiting}&group=audit")).text
    assert f"Entry {waiting} of {data.stream}" in page and "&quot;n&quot;: 200" in page
    assert ">audit</td>" in page and ">billing</td>" not in page
    assert re.search(r">audit</td><td><span class=\"badge\">not.?delivered</span>", page), page
    empty = (await reader.get("/where")).text
    assert '<input name="stream" value="" required>' in empty


async def test_where_is_my_event_without_streamq_where(
    redis_url: str,
    client: redis.asyncio.Redis,
    reader: AsgiClient,
    data: Data,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without streamq.where the page reads for itself: the entry, and each group's pending record of it."""
    monkeypatch.setattr(dashboard_app, "where_module", lambda: None)
    async with streamq.Producer(redis_url) as producer:
        held, _ = await producer.publish_many(data.stream, [Invoice(300), Invoice(301)])
    await client.xreadgroup("audit", "holder-2", {data.stream: ">"}, count=1)
    page = (await reader.get(f"/where?stream={data.stream}&id={held}")).text
    assert "streamq.where is not installed" in page and "&quot;n&quot;: 300" in page
    assert re.search(r">audit</td><td><span class=\"badge\">pending</span></td><td>consumer=holder-2", page)
    assert '>billing</td><td><span class="badge">not delivered</span>' in page
    first = (await reader.get(f"/where?stream={data.stream}&id={data.garbage_dlq}")).text
    assert "holds no entry" in first  # a dead-letter id is no entry of the stream
    assert (await reader.get(f"/where?stream={data.stream}&id=sched-1")).status == 400


async def test_every_response_carries_the_security_headers_and_nothing_loads_from_elsewhere(
    reader: AsgiClient, data: Data
) -> None:
    for target in ("/", f"/stream/{data.stream}", f"/stream/{data.stream}/dead-letters", "/where",
                   "/static/dashboard.css", "/static/dashboard.js", "/nowhere"):  # fmt: skip
        reply = await reader.get(target)
        csp = reply.header("content-security-policy")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert reply.header("x-frame-options") == "DENY"
        assert reply.header("x-content-type-options") == "nosniff"
        if reply.header("content-type").startswith("text/html"):
            assert not re.search(r'(src|href)="(https?:)?//', reply.text), target
            assert "<script>" not in reply.text and " style=" not in reply.text
    assert (await reader.get("/static/dashboard.js")).header("content-type").startswith("text/javascript")
    assert (await reader.get("/nowhere")).status == 404


async def test_mounted_under_a_prefix_its_links_keep_the_prefix(redis_url: str, data: Data) -> None:
    """As Starlette's Mount calls it: root_path is the prefix, path the whole path."""
    app = create_app(redis_url, streams=[data.stream])
    mounted = AsgiClient(app, root_path="/ops/streamq")
    page = (await mounted.get("/ops/streamq/")).text
    assert 'href="/ops/streamq/static/dashboard.css"' in page
    assert f'href="/ops/streamq/stream/{data.stream}"' in page
    assert (await mounted.get(f"/ops/streamq/stream/{data.stream}/dead-letters")).status == 200
    await app.aclose()


async def test_bad_names_and_unknown_letters_are_answered_not_crashed(reader: AsgiClient, data: Data) -> None:
    assert (await reader.get(f"/stream/{data.stream}/dead-letters/1-0")).status == 404
    assert (await reader.get("/stream/streamq:registry")).status == 400
    assert (await reader.get(f"/stream/{data.stream}/dead-letters?reason=nope")).status == 400
    assert (await reader.get("/where?stream=a%20b&id=1-0")).status == 400


# ---------------------------------------------------------------------------------------------- shared reads


async def test_viewers_share_one_read_of_redis_per_refresh(own_server: Any) -> None:
    """Ten viewers at once cost the server the commands of one: they wait for the first one's read."""
    url = own_server.url
    client = redis.asyncio.Redis.from_url(url)
    await make_data(url, client, "shared")

    async def calls() -> int:
        stats = await client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_x"))

    alone = create_app(url, streams=["shared"], refresh_ms=60_000)
    before = await calls()
    assert (await AsgiClient(alone).get("/")).status == 200
    one_viewer = await calls() - before - 0
    crowd = create_app(url, streams=["shared"], refresh_ms=60_000)
    before = await calls()
    replies = await asyncio.gather(*(AsgiClient(crowd).get("/") for _ in range(10)))
    ten_viewers = await calls() - before
    assert [r.status for r in replies] == [200] * 10
    assert one_viewer > 0 and ten_viewers == one_viewer
    assert crowd.reads.reads == 1
    await alone.aclose()
    await crowd.aclose()
    await client.aclose()


# ---------------------------------------------------------------------------------------------- auth


def test_writes_need_authentication(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="needs authentication"):
        create_app(redis_url, allow_writes=True)
    with pytest.raises(ConfigurationError, match="not both"):
        create_app(redis_url, token=TOKEN, basic_auth="a:b")
    with pytest.raises(ConfigurationError, match="user:password"):
        create_app(redis_url, basic_auth="nocolon")


async def test_basic_auth_guards_every_page(redis_url: str, data: Data) -> None:
    app = create_app(redis_url, streams=[data.stream], basic_auth="ops:pw")
    viewer = AsgiClient(app)
    refused = await viewer.get("/")
    assert refused.status == 401 and refused.header("www-authenticate").startswith("Basic")
    assert (await viewer.get("/", headers=basic("ops", "wrong"))).status == 401
    assert (await viewer.get("/", headers=basic("other", "pw"))).status == 401
    assert (await viewer.get(f"/stream/{data.stream}/dead-letters", headers=basic("ops", "pw"))).status == 200
    assert (await viewer.get("/static/dashboard.css")).status == 200  # the login page's own style
    await app.aclose()


async def test_a_token_logs_in_through_a_form_or_a_bearer_header(redis_url: str, data: Data) -> None:
    app = create_app(redis_url, streams=[data.stream], token=TOKEN)
    viewer = AsgiClient(app)
    sent_to_login = await viewer.get(f"/stream/{data.stream}")
    assert sent_to_login.status == 303 and sent_to_login.header("location").startswith("/login?next=")
    assert (await viewer.get("/", headers=BEARER)).status == 200
    wrong = await viewer.post("/login", {"token": "not-the-token", "next": "/"})
    assert wrong.status == 401 and not viewer.cookies
    offsite = await viewer.post("/login", {"token": TOKEN, "next": "//evil.example/"})
    assert offsite.status == 303 and offsite.header("location") == "/"
    cookie = viewer.cookies["streamq_dashboard"]
    assert TOKEN not in cookie and "HttpOnly" in offsite.header("set-cookie")
    assert "SameSite=Strict" in offsite.header("set-cookie")
    assert (await viewer.get(f"/stream/{data.stream}")).status == 200
    logout = await viewer.post("/logout", {"csrf": csrf_of((await viewer.get("/")).text)})
    assert logout.status == 303 and viewer.cookies["streamq_dashboard"] == ""
    assert (await viewer.get("/")).status == 303
    await app.aclose()


# ---------------------------------------------------------------------------------------------- writes


async def _letter(client: redis.asyncio.Redis, data: Data, reason: str = "rejected") -> Any:
    letters = await DeadLetters(client).list(data.stream, group="billing")
    return next(d for d in letters if d.reason == reason)


async def test_writes_are_refused_unless_allowed(
    redis_url: str, client: redis.asyncio.Redis, data: Data
) -> None:
    """Without allow_writes the pages offer no write and every write POST is a 403, authenticated or not,
    with or without a CSRF token; nothing changes in Redis."""
    letter = await _letter(client, data)
    for app in (create_app(redis_url, streams=[data.stream]),
                create_app(redis_url, streams=[data.stream], basic_auth="ops:pw")):  # fmt: skip
        viewer = AsgiClient(app)
        page = await viewer.get(
            f"/stream/{data.stream}/dead-letters/{letter.dlq_id}", headers=basic("ops", "pw")
        )
        assert '<form method="post"' not in page.text and "read-only" in page.text
        csrf = app.auth.csrf_token("basic:ops" if app.auth.required else "anonymous")
        for action, form in (
            ("dead-letters/replay", {"id": letter.dlq_id}), ("dead-letters/purge", {"id": letter.dlq_id}),
            ("pause", {}), ("resume", {}),
        ):  # fmt: skip
            reply = await viewer.post(f"/stream/{data.stream}/{action}", {**form, "csrf": csrf},
                                      headers=basic("ops", "pw"))  # fmt: skip
            assert reply.status == 403 and "writes are off" in reply.text
        await app.aclose()
    assert (await DeadLetters(client).show(data.stream, letter.dlq_id)).dlq_id == letter.dlq_id
    assert await pauses(client, data.stream) == {}


async def test_a_write_without_its_csrf_token_or_from_another_site_is_refused(
    writer: AsgiClient, client: redis.asyncio.Redis, data: Data
) -> None:
    letter = await _letter(client, data)
    auth = basic("ops", "pw")
    target = f"/stream/{data.stream}/dead-letters/replay"
    assert (await writer.post(target, {"id": letter.dlq_id}, headers=auth)).status == 403
    assert (await writer.post(target, {"id": letter.dlq_id, "csrf": "0" * 64}, headers=auth)).status == 403
    page = (await writer.get(f"/stream/{data.stream}/dead-letters/{letter.dlq_id}", headers=auth)).text
    csrf = csrf_of(page)
    elsewhere = {**auth, "origin": "https://evil.example"}
    assert (await writer.post(target, {"id": letter.dlq_id, "csrf": csrf}, headers=elsewhere)).status == 403
    assert (await writer.post(target, {"id": letter.dlq_id, "csrf": csrf})).status == 401  # no credentials
    assert (await DeadLetters(client).show(data.stream, letter.dlq_id)).dlq_id == letter.dlq_id


async def test_replay_sends_a_letter_back_to_its_groups_retry_stream(
    writer: AsgiClient, client: redis.asyncio.Redis, data: Data
) -> None:
    letter = await _letter(client, data)
    auth = {**basic("ops", "pw"), "origin": "http://testserver"}
    page = (await writer.get(f"/stream/{data.stream}/dead-letters/{letter.dlq_id}", headers=auth)).text
    reply = await writer.post(f"/stream/{data.stream}/dead-letters/replay",
                              {"id": letter.dlq_id, "csrf": csrf_of(page)}, headers=auth)  # fmt: skip
    assert reply.status == 303 and "done=replayed&n=1" in reply.header("location")
    retried = await client.xrange(keys.retry_key(data.stream, "billing"))
    assert any(letter.payload in b"".join(fields.values()) for _, fields in retried[-1:])
    assert letter.dlq_id not in {d.dlq_id for d in await DeadLetters(client).list(data.stream)}
    after = (await writer.get(reply.header("location"), headers=auth)).text
    assert "1 dead letter(s) sent back to their group" in after


async def test_purge_of_selected_letters(writer: AsgiClient, client: redis.asyncio.Redis, data: Data) -> None:
    letters = await DeadLetters(client).list(data.stream, group="billing")
    chosen = [d.dlq_id for d in letters if d.reason == "rejected"]
    auth = basic("ops", "pw")
    listing = (await writer.get(f"/stream/{data.stream}/dead-letters?group=billing", headers=auth)).text
    assert listing.count('type="checkbox" name="id"') == 4
    reply = await writer.post(f"/stream/{data.stream}/dead-letters/purge",
                              {"id": chosen, "csrf": csrf_of(listing)}, headers=auth)  # fmt: skip
    assert reply.status == 303 and "done=purged&n=2" in reply.header("location")
    assert {d.reason for d in await DeadLetters(client).list(data.stream, group="billing")} == {
        "max_attempts", "undecodable"
    }  # fmt: skip


async def test_pause_and_resume_a_group_and_the_stream(
    writer: AsgiClient, client: redis.asyncio.Redis, data: Data
) -> None:
    auth = basic("ops", "pw")
    page = (await writer.get(f"/stream/{data.stream}", headers=auth)).text
    csrf = csrf_of(page)
    assert (await writer.post(f"/stream/{data.stream}/pause", {"group": "audit", "csrf": csrf},
                              headers=auth)).status == 303  # fmt: skip
    assert set(await pauses(client, data.stream)) == {"audit"}
    assert (await writer.post(f"/stream/{data.stream}/pause", {"csrf": csrf}, headers=auth)).status == 303
    assert set(await pauses(client, data.stream)) == {"audit", "*"}
    shown = (await writer.get(f"/stream/{data.stream}", headers=auth)).text
    assert "resume stream" in shown and "resume group" in shown and "paused from the dashboard" in shown
    await writer.post(f"/stream/{data.stream}/resume", {"group": "audit", "csrf": csrf}, headers=auth)
    await writer.post(f"/stream/{data.stream}/resume", {"csrf": csrf}, headers=auth)
    assert await pauses(client, data.stream) == {}


# ---------------------------------------------------------------------------------------------- partitions


async def test_a_partitioned_streams_dead_letters_are_browsed_by_partition_id(
    redis_url: str, client: redis.asyncio.Redis, unique: str
) -> None:
    app = streamq.App(redis_url)

    @app.consumer(unique, group="g", partitions=2, partition_lease_ms=600, max_attempts=1, **FAST)
    async def handle(event: Invoice) -> None:
        raise streamq.Reject("no")

    async with streamq.Producer(redis_url, partitions={unique: 2}) as producer:
        await producer.publish_many(unique, [Invoice(n) for n in range(6)])
    await asyncio.wait_for(app.run_until_idle(), 30)
    dashboard = create_app(redis_url, streams=[unique])
    viewer = AsgiClient(dashboard)
    overview = (await viewer.get("/")).text
    assert "<span>partitions</span><b>2</b>" in overview
    listing = (await viewer.get(f"/stream/{unique}/dead-letters")).text
    links = re.findall(r'<a class="letter" href="([^"]+)">([0-9]/[0-9]+-[0-9]+)</a>', listing)
    assert len(links) == 6
    page = (await viewer.get(links[0][0])).text
    assert f"Dead letter {links[0][1]}" in page and "&quot;n&quot;:" in page
    assert (await viewer.get(f"/stream/{unique}")).status == 200
    letter = await DeadLetters(client).show(unique, links[0][1])
    partition = links[0][1].partition("/")[0]
    where = (await viewer.get(f"/where?stream={unique}&id={partition}/{letter.id}")).text
    assert f"Entry {letter.id} of {unique}:{{{unique}:{partition}}}" in where
    await dashboard.aclose()


# ---------------------------------------------------------------------------------------------- command


def test_the_command_refuses_writes_without_authentication(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--allow-writes"]) == USAGE
    assert "--allow-writes needs --token or --basic-auth" in capsys.readouterr().err
    assert main(["dashboard", "--help"]) == OK
    assert "examples:" in capsys.readouterr().out


def test_the_app_class_is_what_create_app_makes(redis_url: str) -> None:
    assert isinstance(create_app(redis_url), DashboardApp)
