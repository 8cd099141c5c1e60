"""streamq.keys: no two names share a key, and every companion key is in its stream's cluster slot.

Slots are computed here from the Redis Cluster spec (CRC16-XMODEM of the hash tag, else of the whole key,
modulo 16384), not with streamq's own code. No Redis needed.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Callable

import pytest
import redis.crc
from hypothesis import example, given
from hypothesis import strategies as st

import streamq
from streamq import keys

GROUP_KINDS: dict[str, Callable[[str, str], str]] = {
    "retry": keys.retry_key,
    "delayed": keys.delayed_key,
    "stats": keys.stats_key,
    "rate": keys.rate_key,
    "live": keys.live_key,
    "members": keys.members_key,
    "owners": keys.owners_key,
}
STREAM_KINDS: dict[str, Callable[[str], str]] = {
    "dlq": keys.dlq_key,
    "scheduled": keys.scheduled_key,
    "scheduled-events": keys.scheduled_events_key,
    "dedup": keys.dedup_index_key,
    "dedup-expiry": keys.dedup_expiry_key,
    "paused": keys.paused_key,
    "totals": keys.totals_key,
    "partitions": keys.partitions_key,
}


def _slot(key: str) -> int:
    """The cluster slot of `key`, per the Redis Cluster specification's HASH_SLOT."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:  # "{}" is no tag: the whole key is hashed
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % 16384  # crc_hqx is CRC16-CCITT/XMODEM, the spec's CRC16


def _companions(stream: str, group: str) -> dict[str, tuple[str, str, str | None]]:
    """Every key of (stream, group), mapped to what it is for: (kind, stream, group or None)."""
    found: dict[str, tuple[str, str, str | None]] = {
        key_of(stream): (kind, stream, None) for kind, key_of in STREAM_KINDS.items()
    }
    for kind, key_of in GROUP_KINDS.items():
        found[key_of(stream, group)] = (kind, stream, group)
    return found


def _accepted(kind: keys.NameKind) -> Callable[[str], bool]:
    def accepted(name: str) -> bool:
        try:
            keys.validate_name(kind, name)
        except streamq.ConfigurationError:
            return False
        return True

    return accepted


def _parse(key: str) -> tuple[str, str, str | None]:
    """Read (kind, stream, group or None) back from a companion key, by the layout keys.py documents.

    That this is a function of the key alone is what makes the layout injective."""
    assert key.startswith("streamq:")
    rest = key.removeprefix("streamq:")
    stream_kind = rest.rsplit(":", 1)[1]
    if stream_kind in STREAM_KINDS:
        kind, group, prefix = stream_kind, None, rest.removesuffix(":" + stream_kind)
    else:
        prefix_and_group, kind = rest.rsplit(":", 1)
        prefix, group = prefix_and_group.rsplit(":", 1)
    inner = prefix[1:-1]
    wrapped = prefix[:1] == "{" and prefix[-1:] == "}" and "{" not in inner and "}" not in inner
    return kind, inner if wrapped else prefix, group


# Few characters, braces and colons among them, so that near-collisions are common.
_TIGHT = st.text(alphabet="ab:{}", min_size=1, max_size=10)
_TAGGED = st.from_regex(r"[a:]{0,3}\{[a{:]{1,3}\}[ab:{}]{0,4}", fullmatch=True)
_WIDE = st.text(alphabet="Az09_.:-{}", min_size=1, max_size=40)
STREAMS = st.one_of(_TIGHT, _TAGGED, _WIDE).filter(_accepted("stream"))
GROUPS = st.one_of(_TIGHT, _WIDE).filter(_accepted("group"))


def test_slot_helper_follows_the_spec() -> None:
    """The test's own slot function gives the spec's CRC16 check value and agrees with redis-py's."""
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3  # the spec's reference output
    for key in ["orders", "{a}b", "a{b}c", "{}x", "{a{b}c}", "a}b", "x{}{y}", "streamq:{orders}:dlq"]:
        assert _slot(key) == redis.crc.key_slot(key.encode())
    assert _slot("{user1000}.following") == _slot("{user1000}.followers")
    assert _slot("foo{}{bar}") == binascii.crc_hqx(b"foo{}{bar}", 0) % 16384  # spec example: whole key
    assert _slot("foo{{bar}}zap") == binascii.crc_hqx(b"{bar", 0) % 16384  # spec example: tag "{bar"


def test_readme_layout_for_plain_names() -> None:
    """Plain names keep the layout the README shows; a stream with its own hash tag keeps its name."""
    assert keys.dlq_key("orders") == "streamq:{orders}:dlq"
    assert keys.retry_key("orders", "billing") == "streamq:{orders}:billing:retry"
    assert keys.delayed_key("orders", "billing") == "streamq:{orders}:billing:delayed"
    assert keys.stats_key("orders", "billing") == "streamq:{orders}:billing:stats"
    assert keys.dlq_key("app1:orders") == "streamq:{app1:orders}:dlq"
    assert keys.dlq_key("{app}orders") == "streamq:{app}orders:dlq"
    assert keys.retry_key("app1:{eu}orders", "billing") == "streamq:app1:{eu}orders:billing:retry"
    assert keys.REGISTRY_KEY == "streamq:registry"


# ------------------------------------------------------------------------------------ the old collisions


def test_a_stream_named_by_its_hash_tag_alone_does_not_share_the_dead_letters_of_the_bare_name() -> None:
    """`{a}` and `a` had one dead-letter stream (`streamq:{a}:dlq`). `{a}` is refused now; `a` (the same
    cluster slot) keeps the key."""
    assert keys.dlq_key("a") == "streamq:{a}:dlq"
    with pytest.raises(streamq.ConfigurationError, match="hash tag alone"):
        keys.dlq_key("{a}")
    with pytest.raises(streamq.ConfigurationError, match="stream name"):
        keys.validate_name("stream", "{a}")


def test_a_colon_in_a_group_name_cannot_move_the_boundary_between_stream_and_group() -> None:
    """(`{x}s`, `a:b`) and (`{x}s:a`, `b`) had one retry stream. Group names with ':' are refused now, so
    the group is always the field before the kind."""
    assert keys.retry_key("{x}s:a", "b") == "streamq:{x}s:a:b:retry"
    for key_of in GROUP_KINDS.values():
        with pytest.raises(streamq.ConfigurationError, match="group name"):
            key_of("{x}s", "a:b")
    with pytest.raises(streamq.ConfigurationError, match="group name"):
        keys.validate_name("group", "a:b")


@pytest.mark.parametrize("stream", ["a}b", "{}x", "a{b", "}{", "{}{"])
def test_braces_that_give_no_hash_tag_are_refused(stream: str) -> None:
    """Redis hashes such a name whole, and no companion key can carry a tag equal to a name holding a brace
    (`a}b` used to get `streamq:{a}b}:dlq`, slot of `a`): the name is refused rather than split from its
    companions."""
    with pytest.raises(streamq.ConfigurationError, match="no hash tag"):
        keys.validate_name("stream", stream)
    with pytest.raises(streamq.ConfigurationError, match="no hash tag"):
        keys.dlq_key(stream)


# ------------------------------------------------------------------------------------ the properties


@given(stream=STREAMS, group=GROUPS)
@example(stream="a", group="b").via("the README's shape")
@example(stream="{x}s:a", group="b").via("first old collision")
@example(stream="{a}{b}", group="{c}").via("a second tag, a braced group")
@example(stream="a{b{c}d}", group="}").via("tag holding '{'")
def test_every_key_tells_its_stream_group_and_kind(stream: str, group: str) -> None:
    """Each companion key reads back as exactly the (kind, stream, group) it was made for, so no two
    distinct pairs, and no two kinds, ever share a key; none is a stream's own key or the registry."""
    for key, meaning in _companions(stream, group).items():
        assert _parse(key) == meaning
        assert key != keys.REGISTRY_KEY
    assert not stream.startswith("streamq:")  # so no stream's own key is any companion key


@given(first=st.tuples(STREAMS, GROUPS), second=st.tuples(STREAMS, GROUPS))
@example(first=("a", "g"), second=("{a}", "g")).via("the old dead-letter collision")
@example(first=("{x}s", "a:b"), second=("{x}s:a", "b")).via("the old retry collision")
def test_distinct_names_never_share_a_key(first: tuple[str, str], second: tuple[str, str]) -> None:
    """For any two valid (stream, group) pairs, a key both derive is the same key of the same kind for the
    same pair; a stream's name is never another's companion."""
    if not all(_accepted("stream")(s) and _accepted("group")(g) for s, g in (first, second)):
        return  # an explicit example that validation refuses: nothing to derive
    a, b = _companions(*first), _companions(*second)
    for key in a.keys() & b.keys():
        assert a[key] == b[key]
    assert not ({first[0], second[0]} & (a.keys() | b.keys()))


@given(stream=STREAMS, group=GROUPS)
@example(stream="{app}orders", group="billing").via("tag at the start")
@example(stream="app1:{eu}orders", group="x{y}z").via("tag inside, braced group")
@example(stream="x{a{b}c}", group="g").via("tag holding '{'")
def test_every_companion_is_in_its_streams_slot(stream: str, group: str) -> None:
    """Dead letters, retry stream, delayed set and counters hash to the stream's own cluster slot, so one
    Lua script may touch them together on Redis Cluster."""
    for key in _companions(stream, group):
        assert _slot(key) == _slot(stream), key


def test_short_names_exhaustively() -> None:
    """Every stream name up to 4 characters and group name up to 3 over `a b : { }`: the valid ones give
    pairwise distinct keys, each in its stream's slot (the small space where collisions live)."""
    alphabet = "ab:{}"

    def names(longest: int) -> list[str]:
        return ["".join(p) for n in range(1, longest + 1) for p in itertools.product(alphabet, repeat=n)]

    streams = [s for s in names(4) if _accepted("stream")(s)]
    groups = [g for g in names(3) if _accepted("group")(g)]
    assert {"a:b", "{a}b", "a{b}"} <= set(streams) and len(groups) > 50
    seen: dict[str, tuple[str, str, str | None]] = {s: ("stream", s, None) for s in streams}
    seen[keys.REGISTRY_KEY] = ("registry", "", None)
    for stream in streams:
        slot = _slot(stream)
        for group in groups:
            for key, meaning in _companions(stream, group).items():
                assert seen.setdefault(key, meaning) == meaning, key
                assert _slot(key) == slot, key


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    [
        ("stream", "", "1-200 characters"),
        ("stream", "x" * 201, "1-200 characters"),
        ("stream", "has space", "1-200 characters"),
        ("stream", "trailing\n", "1-200 characters"),
        ("stream", "{orders}", "hash tag alone"),
        ("stream", "a}b", "no hash tag"),
        ("stream", "{}orders", "no hash tag"),
        ("stream", "streamq:orders", "must not start with 'streamq:'"),
        ("stream", "streamq:{orders}:dlq", "must not start with 'streamq:'"),
        ("stream", "streamq:registry", "must not start with 'streamq:'"),
        ("group", "billing:eu", "must not contain ':'"),
        ("group", "*", "1-200 characters"),
        ("consumer prefix", "a b", "1-200 characters"),
    ],
)
def test_refused_names(kind: keys.NameKind, name: str, why: str) -> None:
    """A name that could collide or leave its stream's slot is a ConfigurationError naming what it is."""
    with pytest.raises(streamq.ConfigurationError, match=f"{kind} name .*{why}"):
        keys.validate_name(kind, name)


@pytest.mark.parametrize(
    "stream", ["orders", "app1:orders", "{app}orders", "app1:{eu}orders", "{a}{b}", "{a}b}", "a.b-c_d"]
)
def test_accepted_stream_names(stream: str) -> None:
    """Plain names, colons, and braces that form a hash tag (even followed by more braces) are valid."""
    assert keys.validate_name("stream", stream) == stream


def test_accepted_group_names() -> None:
    """Group names may hold braces (the stream's tag comes first), and dots, dashes and underscores."""
    for group in ["billing", "billing_v2", "eu-1.a", "{x}", "}"]:
        assert keys.validate_name("group", group) == group
        assert keys.retry_key("orders", group) == f"streamq:{{orders}}:{group}:retry"


def test_key_functions_refuse_what_validation_refuses() -> None:
    """Keys are never derived from a refused name, whoever calls: a dead letter naming an old group with
    ':' cannot be replayed into another group's retry stream."""
    with pytest.raises(streamq.ConfigurationError, match="group name"):
        keys.stats_key("orders", "a:b")
    with pytest.raises(streamq.ConfigurationError, match="stream name"):
        keys.delayed_key("streamq:x", "g")
