"""Retention under hostile input: ids at the edge of their range, keys of another type, settings at the
edge of their range, partitioned groups deleted while a partition still has a live consumer, and what
`streamq status` says about a group that holds trimming back.
"""

from __future__ import annotations

import pytest
import redis
import redis.asyncio

from streamq import keys
from streamq.cli import FAILURE, OK, main
from streamq.control import pause_sync, pauses_sync
from streamq.errors import ConfigurationError, GroupInUse
from streamq.partitions import partition_streams
from streamq.retention import COUNT_CAP, delete_group, delete_group_sync, holdback_sync, trim_sync
from streamq.settings import MAX_MAXLEN

MAX_SEQ = 2**64 - 1  # the largest sequence number (and time part) of a stream id


def _fill(client: redis.Redis, stream: str, n: int) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"n": i})
    return list(pipe.execute())


def _read(client: redis.Redis, stream: str, group: str, count: int, consumer: str = "c") -> list[bytes]:
    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


# ---------------------------------------------------------------------------------------------- holdback


@pytest.mark.parametrize("ms", [5, 9_999_999_999_999])
def test_status_of_a_group_past_the_largest_sequence_number(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str, ms: int
) -> None:
    """A group that has read an entry whose sequence number is the largest there is: the id after it is
    not a valid id, so holdback (and with it `streamq status`) must not ask the server about it. As in the
    TRIM script, a bound with so long a sequence number keeps the entry itself."""
    sync_client.xadd(unique, {"n": 1}, id=f"{ms}-{MAX_SEQ - 1}")
    sync_client.xadd(unique, {"n": 2}, id=f"{ms}-{MAX_SEQ}")
    sync_client.xgroup_create(unique, "done", "0")
    sync_client.xgroup_create(unique, "stalled", "0")
    sync_client.xack(unique, "done", *_read(sync_client, unique, "done", 2))
    held = holdback_sync(sync_client, unique)
    assert held is not None and (held.group, held.kept, held.next_id) == ("stalled", 1, f"{ms}-{MAX_SEQ}")
    assert trim_sync(sync_client, unique).safe_id == "0-1"
    assert main(["status", unique, "--redis-url", redis_url]) == OK, capsys.readouterr().err
    assert "trimming held back by group stalled" in capsys.readouterr().out


def test_holdback_says_since_when_for_a_group_that_has_read_nothing(
    sync_client: redis.Redis, unique: str
) -> None:
    """A group created at 0 that has read nothing holds the stream from its first entry: `since` is when
    that entry was appended, not the epoch (which `streamq status` showed as an unknown time)."""
    ids = _fill(sync_client, unique, 50)
    sync_client.xgroup_create(unique, "done", "0")
    sync_client.xgroup_create(unique, "stalled", "0")
    sync_client.xack(unique, "done", *_read(sync_client, unique, "done", 50))
    held = holdback_sync(sync_client, unique)
    assert held is not None and (held.group, held.reason, held.kept) == ("stalled", "unread", 50)
    assert held.since_ms == int(ids[0].split(b"-")[0])


def test_holdback_of_a_key_of_another_type_is_a_configuration_error(
    sync_client: redis.Redis, unique: str
) -> None:
    sync_client.set(unique, "x")
    with pytest.raises(ConfigurationError, match="not a stream"):
        holdback_sync(sync_client, unique)


# ---------------------------------------------------------------------------------------------- trim


def test_trim_names_the_dead_letter_stream_when_it_is_of_another_type(
    sync_client: redis.Redis, unique: str
) -> None:
    """The stream is fine, its dead-letter key is not: the error names the dead-letter key, which is the
    one the operator has to fix."""
    _fill(sync_client, unique, 5)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.set(keys.dlq_key(unique), "x")
    with pytest.raises(ConfigurationError) as raised:
        trim_sync(sync_client, unique, dlq_max_len=10)
    assert keys.dlq_key(unique) in str(raised.value)
    assert f"key {unique!r} exists" not in str(raised.value)


def test_the_largest_caps_accepted_are_usable(sync_client: redis.Redis, unique: str) -> None:
    """max_len and dlq_max_len may be up to MAX_MAXLEN; the script must hand the server that integer, not
    a float that XTRIM refuses (every trim of such a worker failed until the worker stopped)."""
    _fill(sync_client, unique, 5)
    sync_client.xgroup_create(unique, "g", "0")
    sync_client.xadd(keys.dlq_key(unique), {"x": 1})
    result = trim_sync(sync_client, unique, max_len=MAX_MAXLEN, dlq_max_len=MAX_MAXLEN)
    assert (result.dropped, result.dead_letters_expired, result.length_after) == (0, 0, 5)


# ---------------------------------------------------------------------------------------------- group delete


def test_group_delete_of_a_key_of_another_type_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    sync_client.set(unique, "x")
    with pytest.raises(ConfigurationError, match="not a stream"):
        delete_group_sync(sync_client, unique, "g")
    assert main(["group", "delete", unique, "g", "--redis-url", redis_url]) == FAILURE
    err = capsys.readouterr().err
    assert f"key {unique!r} exists and is not a stream" in err and "user_script" not in err.split(":")[1]


def _partitioned(client: redis.Redis, stream: str, group: str, partitions: int) -> list[str]:
    client.set(keys.partitions_key(stream), partitions)
    names = partition_streams(stream, partitions)
    for name in names:
        client.xadd(name, {"n": 1})
        client.xgroup_create(name, group, "0")
        client.zadd(keys.delayed_key(name, group), {"retry": 1})
    return names


def test_group_delete_of_a_partitioned_stream_refused_deletes_nothing(
    sync_client: redis.Redis, unique: str
) -> None:
    """A refusal (a live consumer on one partition) comes before anything is deleted: partition 0's group
    and its waiting retries are still there when the consumer lives on partition 1."""
    names = _partitioned(sync_client, unique, "g", 2)
    _read(sync_client, names[1], "g", 1, consumer="live-one")
    with pytest.raises(GroupInUse) as raised:
        delete_group_sync(sync_client, unique, "g")
    assert [name for name, _ in raised.value.live] == ["live-one"]
    for name in names:
        assert [g["name"] for g in sync_client.xinfo_groups(name)] == [b"g"]
        assert sync_client.exists(keys.delayed_key(name, "g"))


def test_group_delete_of_a_partitioned_stream_removes_its_pause(
    sync_client: redis.Redis, unique: str
) -> None:
    """A group paused on a partitioned stream is paused in the stream's own pause hash and in each
    partition's: deleting the group removes them all, so status no longer lists a pause of a group that
    is gone."""
    _partitioned(sync_client, unique, "g", 2)
    pause_sync(sync_client, unique, group="g", reason="migrating")
    pause_sync(sync_client, unique, group="other")
    deleted = delete_group_sync(sync_client, unique, "g")
    assert deleted.existed
    assert set(pauses_sync(sync_client, unique)) == {"other"}
    for name in partition_streams(unique, 2):
        assert set(pauses_sync(sync_client, name)) == {"other"}


def test_a_dry_run_of_a_long_acknowledged_stream_does_not_predict_drops(
    sync_client: redis.Redis, unique: str
) -> None:
    """More acknowledged entries than a dry run counts below the cut: what max_len would drop is taken
    from what stays, not from a capped count (which said thousands would be dropped, and none were)."""
    n = COUNT_CAP + 500
    _fill(sync_client, unique, n)
    sync_client.xgroup_create(unique, "g", "0")
    while read := _read(sync_client, unique, "g", 5000):
        sync_client.xack(unique, "g", *read)
    dry = trim_sync(sync_client, unique, max_len=100, dry_run=True)
    assert (dry.removed, dry.dropped, dry.length_after, dry.estimated) == (n, 0, 0, False)
    real = trim_sync(sync_client, unique, max_len=100)
    assert (real.removed, real.dropped, real.length_after) == (n, 0, 0)


def test_trim_of_an_empty_stream_counts_its_groups(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """A stream emptied by trimming still has its groups: `streamq trim` must not say it has none."""
    sync_client.xgroup_create(unique, "g", "$", mkstream=True)
    result = trim_sync(sync_client, unique)
    assert (result.groups, result.removed, result.length_after, result.held_by) == (1, 0, 0, "g")
    assert main(["trim", unique, "--redis-url", redis_url]) == OK
    out = capsys.readouterr().out
    assert "no consumer group" not in out and f"{unique}: length 0" in out


def test_trim_of_a_partitioned_stream_says_who_holds_each_partition_back(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """`streamq trim` is also for seeing what holds trimming back: on a partitioned stream it says so per
    partition (the summed result names no group)."""
    names = _partitioned(sync_client, unique, "fast", 2)
    for name in names:
        sync_client.xgroup_create(name, "slow", "0")
        sync_client.xack(name, "fast", *_read(sync_client, name, "fast", 10))
    sync_client.xack(names[0], "slow", *_read(sync_client, names[0], "slow", 10))
    assert main(["trim", unique, "--dry-run", "--redis-url", redis_url]) == OK
    out = capsys.readouterr().out
    assert f"{names[1]}: held back by group slow at 0-1" in out
    assert f"{names[0]}: held back" not in out  # nothing left there to hold


async def test_group_delete_of_a_partitioned_stream_refused_deletes_nothing_async(
    client: redis.asyncio.Redis, sync_client: redis.Redis, unique: str
) -> None:
    """The same refusal from asyncio code: nothing of the group is deleted."""
    names = _partitioned(sync_client, unique, "g", 3)
    _read(sync_client, names[2], "g", 1, consumer="live-one")
    with pytest.raises(GroupInUse):
        await delete_group(client, unique, "g")
    for name in names:
        assert [g["name"] for g in sync_client.xinfo_groups(name)] == [b"g"]
        assert sync_client.exists(keys.delayed_key(name, "g"))


def test_streamq_trim_expires_dead_letters_when_asked(
    capsys: pytest.CaptureFixture[str], redis_url: str, sync_client: redis.Redis, unique: str
) -> None:
    """`streamq trim` is for streams without a running worker, whose dead letters nothing else expires:
    --dlq-max-age-ms does it, and says how many; without it they are left alone."""
    now_ms = int(sync_client.time()[0]) * 1000
    dlq = keys.dlq_key(unique)
    for i in range(5):
        sync_client.xadd(dlq, {"x": i}, id=f"{now_ms - 3_600_000 + i}-0")  # an hour old
    sync_client.xadd(dlq, {"x": 9})
    assert main(["trim", unique, "--redis-url", redis_url]) == OK
    assert sync_client.xlen(dlq) == 6
    capsys.readouterr()
    assert main(["trim", unique, "--dlq-max-age-ms", "600000", "--redis-url", redis_url]) == OK
    assert f"{unique}: expired 5 dead letters" in capsys.readouterr().out
    assert sync_client.xlen(dlq) == 1


def test_a_few_old_dead_letters_expire(sync_client: redis.Redis, unique: str) -> None:
    """A dead-letter stream of a handful of letters is one node of the stream: an approximate trim never
    frees it, so its letters outlived dlq_max_age_ms for ever. They expire, and only the old ones."""
    now_ms = int(sync_client.time()[0]) * 1000
    dlq = keys.dlq_key(unique)
    old = [sync_client.xadd(dlq, {"x": i}, id=f"{now_ms - 3_600_000 + i}-0") for i in range(5)]
    recent = sync_client.xadd(dlq, {"x": 9})
    dry = trim_sync(sync_client, unique, dlq_max_age_ms=600_000, dry_run=True)
    result = trim_sync(sync_client, unique, dlq_max_age_ms=600_000)
    assert dry.dead_letters_expired == result.dead_letters_expired == len(old)
    assert [entry_id for entry_id, _ in sync_client.xrange(dlq)] == [recent]
