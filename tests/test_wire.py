"""streamq._wire: command packing, reply parsing across server versions, and the scripts on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

from streamq import _wire
from streamq.errors import ConfigurationError

# ----------------------------------------------------------------------------------------- pure parsing


def test_pack_is_resp() -> None:
    """Commands are packed as RESP arrays of bulk strings, whatever the argument types."""
    assert _wire.pack("XACK", "s", b"g", 12) == b"*4\r\n$4\r\nXACK\r\n$1\r\ns\r\n$1\r\ng\r\n$2\r\n12\r\n"


def test_pack_with_ids_equals_the_general_packing() -> None:
    ids = [b"1-1", b"1700000000000-12", b"18446744073709551615-18446744073709551615"]
    head = ("EVALSHA", "ab" * 20, 2, "orders", "streamq:{orders}:g:stats", "g", b"1")
    assert _wire.pack_with_ids(head, ids) == _wire.pack(*head, *ids)
    assert _wire.pack_with_ids(head, []) == _wire.pack(*head)


async def test_link_pairs_replies_sent_ahead_in_order(client: redis.asyncio.Redis, unique: str) -> None:
    """Commands sent without waiting are answered in order by receive(); a round trip is refused while
    replies are owed (it would read theirs), and abandon() drops them with the connection."""
    link = _wire.Link(client)
    try:
        await link.send(_wire.pack("SET", unique, "1") + _wire.pack("INCR", unique), 2)
        await link.send(_wire.pack("GET", unique), 1)
        assert link.owed == 3
        assert await link.receive(2) == [b"OK", 2]
        with pytest.raises(RuntimeError, match="owed"):
            await link.call("PING")
        await link.abandon()
        assert link.owed == 0
        assert await link.call("GET", unique) == b"2"  # reconnected, in step again
    finally:
        await link.close()


def test_parse_autoclaim_pre_7_reply_with_nil_fields() -> None:
    """Before 7.0 XAUTOCLAIM replies [cursor, entries]; an entry deleted while pending comes back with nil
    fields (or as a bare nil) and must be reported as deleted, not handed to a handler."""
    reply = [b"1-5", [[b"1-1", [b"d", b"a"]], [b"1-2", None], None, [b"1-4", [b"d", b"b"]]]]
    cursor, batch, deleted = _wire.parse_autoclaim("s", reply)
    assert cursor == b"1-5"
    assert batch == _wire.StreamBatch("s", [b"1-1", b"1-4"], [[b"d", b"a"], [b"d", b"b"]])
    assert deleted == [b"1-2"]


def test_parse_autoclaim_7_reply_lists_deleted_ids_apart() -> None:
    """From 7.0 the reply has a third element: the ids of pending entries that no longer exist."""
    reply = [b"0-0", [[b"1-1", [b"d", b"a"]]], [b"1-2", b"1-3"]]
    cursor, batch, deleted = _wire.parse_autoclaim("k", reply)
    assert cursor == b"0-0"
    assert batch.ids == [b"1-1"] and batch.fields == [[b"d", b"a"]] and batch.key == "k"
    assert deleted == [b"1-2", b"1-3"]


def test_parse_autoclaim_empty_replies() -> None:
    """Empty entry lists (and an empty deleted list, or a nil one) parse to nothing."""
    for reply in ([b"0-0", []], [b"0-0", [], []], [b"0-0", None, None]):
        cursor, batch, deleted = _wire.parse_autoclaim("k", reply)
        assert (cursor, batch.ids, deleted) == (b"0-0", [], [])


def test_parse_read_resp2_and_resp3() -> None:
    """XREADGROUP replies as [[key, entries], ...] (RESP2) or as a map (RESP3); both give the same batches,
    trimmed pending entries keep their id with None fields, and keys without entries are left out."""
    entries = [[b"1-1", [b"d", b"x"]], [b"1-2", None]]
    expected = [_wire.StreamBatch("s", [b"1-1", b"1-2"], [[b"d", b"x"], None])]
    assert _wire.parse_read([[b"s", entries], [b"r", []]]) == expected
    assert _wire.parse_read({b"s": entries, b"r": []}) == expected
    assert _wire.parse_read(None) == []


def test_parse_pending_and_payload_of() -> None:
    """Extended XPENDING rows become {id: delivery count}; payload_of finds a field in a flat list."""
    assert _wire.parse_pending([[b"1-1", b"c", 5, 3], [b"1-2", b"c", 9, 1]]) == {b"1-1": 3, b"1-2": 1}
    assert _wire.payload_of([b"d", b"p"], b"d") == b"p"
    assert _wire.payload_of([b"x", b"1", b"d", b"p"], b"d") == b"p"
    assert _wire.payload_of([b"x", b"1"], b"d") is None
    assert _wire.payload_of(None, b"d") is None


def test_parse_version() -> None:
    """Server version strings compare as integer tuples."""
    assert _wire.parse_version("7.0.15") == (7, 0, 15)
    assert _wire.parse_version("6.0.16") < _wire.MIN_SERVER_VERSION <= _wire.parse_version("7.0.0")
    assert _wire.parse_version("255.255.255") > _wire.SAFE_SERVER_VERSION


# ------------------------------------------------------------------------------------- on a real server


@pytest.fixture
async def link(client: redis.asyncio.Redis) -> AsyncIterator[_wire.Link]:
    held = _wire.Link(client)
    try:
        yield held
    finally:
        await held.close()


async def _pending_rows(
    client: redis.asyncio.Redis, key: str, group: str
) -> dict[bytes, tuple[bytes, int, int]]:
    rows = await client.xpending_range(key, group, min="-", max="+", count=1000)
    return {r["message_id"]: (r["consumer"], r["time_since_delivered"], r["times_delivered"]) for r in rows}


async def test_ensure_group_creates_at_start_with_mkstream(client: redis.asyncio.Redis, unique: str) -> None:
    """The group is created on a missing stream (MKSTREAM) at id 0, and creating it again is not an error."""
    assert await _wire.ensure_group(client, unique, "g") is True
    assert await _wire.ensure_group(client, unique, "g") is False
    (group,) = await client.xinfo_groups(unique)
    assert group["last-delivered-id"] == b"0-0"


async def test_ensure_group_on_a_key_of_another_type(client: redis.asyncio.Redis, unique: str) -> None:
    """A key that is not a stream is a configuration error that names the key."""
    await client.set(unique, "x")
    with pytest.raises(ConfigurationError, match=unique):
        await _wire.ensure_group(client, unique, "g")


async def test_autoclaim_on_the_server_reports_deleted_entries(
    client: redis.asyncio.Redis, link: _wire.Link, unique: str
) -> None:
    """On this server's real XAUTOCLAIM reply, an entry deleted while pending is reported as deleted, live
    ones are claimed with their fields, and delivery counts include the claim."""
    await _wire.ensure_group(client, unique, "g")
    ids = [await client.xadd(unique, {"d": f"p{i}"}) for i in range(3)]
    await client.xreadgroup("g", "dead", {unique: ">"})
    await client.xdel(unique, ids[1])
    claimed = await _wire.autoclaim(link, unique, "g", "alive", min_idle_ms=0, cursor=b"0-0", count=10)
    assert claimed.batch.ids == [ids[0], ids[2]]
    assert claimed.batch.fields == [[b"d", b"p0"], [b"d", b"p2"]]
    assert claimed.deleted == [ids[1]]
    assert claimed.deliveries == {ids[0]: 2, ids[2]: 2}


async def test_renew_resets_idle_without_counting_a_delivery(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """Lease renewal keeps entries with their owner, leaves the delivery count alone, and returns the ids
    the caller no longer holds without touching them."""
    await _wire.ensure_group(client, unique, "g")
    ids = [await client.xadd(unique, {"d": b"x"}) for _ in range(3)]
    await client.xreadgroup("g", "me", {unique: ">"})
    await client.xclaim(unique, "g", "other", 0, [ids[2]])
    lost = _wire.renew_sync(sync_client, unique, "g", "me", ids)
    assert lost == [ids[2]]
    rows = await _pending_rows(client, unique, "g")
    assert rows[ids[0]][0] == b"me" and rows[ids[0]][2] == 1
    assert rows[ids[1]][0] == b"me" and rows[ids[1]][2] == 1
    assert rows[ids[2]][0] == b"other" and rows[ids[2]][2] == 2  # untouched by the renewal


async def test_renew_does_not_report_trimmed_entries_as_taken(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """An entry trimmed while held, and dropped from the PEL by anyone's XAUTOCLAIM, is nobody's now: the
    renewal does not report it as taken by another worker (the lease keeper would log a false alarm)."""
    await _wire.ensure_group(client, unique, "g")
    ids = [await client.xadd(unique, {"d": b"x"}) for _ in range(2)]
    await client.xreadgroup("g", "me", {unique: ">"})
    await client.xdel(unique, ids[0])
    await client.xautoclaim(unique, "g", "other", 3_600_000, "0-0")
    assert _wire.renew_sync(sync_client, unique, "g", "me", ids) == []


async def test_scripts_are_reloaded_after_the_server_forgets_them(
    client: redis.asyncio.Redis, link: _wire.Link, unique: str
) -> None:
    """After SCRIPT FLUSH (as after a restart) a script call loads the scripts again and succeeds."""
    await client.zadd(unique, {b"record": 0})
    await client.script_flush()
    moved, next_ms = await _wire.move_due(link, unique, f"{unique}:retry", 10)
    assert (moved, next_ms) == (1, -1)
    assert await client.xlen(f"{unique}:retry") == 1


async def test_reap_never_drops_a_consumer_that_holds_entries(
    client: redis.asyncio.Redis, unique: str
) -> None:
    """REAP deletes an idle consumer only when it holds nothing (DELCONSUMER would lose its entries)."""
    await _wire.ensure_group(client, unique, "g")
    await client.xadd(unique, {"d": b"x"})
    await client.xreadgroup("g", "holder", {unique: ">"})
    await client.xreadgroup("g", "empty", {unique: ">"})
    assert await _wire.reap(client, [unique], "g", "holder") is False
    assert await _wire.reap(client, [unique], "g", "empty") is True
    names = {c["name"] for c in await client.xinfo_consumers(unique, "g")}
    assert names == {b"holder"}


async def test_reap_reports_a_denied_check_instead_of_deleting(
    client: redis.asyncio.Redis, redis_url: str, unique: str
) -> None:
    """A user that may delete consumers but not list their pending entries gets an error from REAP: the
    denied check is never read as "holds nothing" (which would delete a consumer and lose its entries).
    A retry stream that does not exist yet does hold nothing."""
    await _wire.ensure_group(client, unique, "g")
    await client.xadd(unique, {"d": b"x"})
    await client.xreadgroup("g", "holder", {unique: ">"})
    user = f"{unique}-reaper"
    await client.execute_command(
        "ACL", "SETUSER", user, "on", "nopass", "+evalsha", "+eval", "+xgroup|delconsumer", "~*"
    )
    reaper = redis.asyncio.Redis.from_url(redis_url, username=user)
    try:
        with pytest.raises(redis.ResponseError, match=r"(?i)can't run|no permissions"):
            await _wire.reap(reaper, [unique, f"{unique}:never-created"], "g", "holder")
    finally:
        await reaper.aclose()
        await client.execute_command("ACL", "DELUSER", user)
    assert {c["name"] for c in await client.xinfo_consumers(unique, "g")} == {b"holder"}
    await client.xreadgroup("g", "empty", {unique: ">"})
    assert await _wire.reap(client, [unique, f"{unique}:never-created"], "g", "empty") is True


async def test_check_server_reports_version_and_memory_policy(client: redis.asyncio.Redis) -> None:
    """The server check returns the version (new enough) and the maxmemory policy."""
    found = await _wire.check_server(client)
    assert _wire.parse_version(found["version"]) >= _wire.MIN_SERVER_VERSION
    assert found["server"] in ("redis", "valkey")
    assert found["maxmemory_policy"] == "noeviction"
