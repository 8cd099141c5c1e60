"""The pages' bodies, as HTML (the dead-letter pages are in _letter_pages.py): every value from Redis or the
request goes through `h`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..events import Event
from ..inspect import StreamStatus
from ._data import Overview, Rates, StreamDetail, StreamView
from ._html import duration_ms, form_button, h, key_values, number, sparkline, stream_link, table, when
from ._http import Request, segment
from ._letter_pages import pretty_fields
from ._letters import decode_payload
from ._where import Found


def _paused(st: StreamStatus, group: str | None) -> str:
    scopes = [scope for scope in st.paused if scope == "*" or scope == group]
    if not scopes:
        return ""
    info = st.paused[scopes[0]]
    title = f"paused since {when(info.since_ms)}" + (f": {info.reason}" if info.reason else "")
    what = "stream paused" if scopes[0] == "*" else "paused"
    return f'<span class="badge paused" title="{h(title)}">{what}</span>'


def overview(request: Request, data: Overview, rates: Rates) -> str:
    if not data.streams:
        return (
            '<h1>Streams</h1><p class="empty">No streams yet: none has had a streamq worker.'
            " Name streams on the command line (<code>streamq dashboard STREAM ...</code>) to show them"
            " anyway.</p>"
        )
    cards = [_stream_card(request, view, rates) for view in data.streams]
    return f'<h1>Streams</h1><p class="meta">read {h(when(int(data.read_s * 1000)))}</p>' + "".join(cards)


def _stream_card(request: Request, view: StreamView, rates: Rates) -> str:
    st = view.status
    name = st.stream
    if not st.exists:
        kind = "no such stream" if st.key_type in ("none", "") else f"a {st.key_type}, not a stream"
        return (
            f'<section class="stream"><h2><a href="{h(stream_link(request, name))}">{h(name)}</a></h2>'
            f'<p class="empty">{h(kind)}; {number(st.dead_letters)} dead letters</p></section>'
        )
    window = rates.window_s
    facts = [
        ("length", number(st.length)),
        (
            "in",
            sparkline(rates.per_second(name, "added"), window, f"{name}: events added")
            if view.added is not None
            else "-",
        ),
        ("scheduled", number(st.scheduled)),
        (
            "dead letters",
            f'<a href="{h(stream_link(request, name, "/dead-letters"))}">{number(st.dead_letters)}</a>',
        ),
    ]
    if st.partitions is not None:
        facts.insert(1, ("partitions", number(st.partitions)))
    fact_html = "".join(f'<div class="fact"><span>{h(k)}</span><b>{v}</b></div>' for k, v in facts)
    rows = []
    for g in view.groups:
        gs = g.status
        dead_link = request.url(f"/stream/{segment(name)}/dead-letters", group=gs.name)
        rows.append(
            [
                f"{h(gs.name)} {_paused(st, gs.name)}",
                number(gs.lag),
                number(gs.pending),
                duration_ms(g.oldest_pending_ms),
                sparkline(rates.per_second(name, gs.name, "acked"), window, f"{gs.name}: acked"),
                sparkline(rates.per_second(name, gs.name, "retried"), window, f"{gs.name}: retried"),
                sparkline(rates.per_second(name, gs.name, "dead"), window, f"{gs.name}: dead-lettered"),
                number(gs.retries_waiting),
                number(gs.consumers),
                f'<a href="{h(dead_link)}">{number(gs.stats.get("dead", 0))}</a>',
            ]
        )
    groups = (
        table(
            [
                "group",
                "lag",
                "pending",
                "oldest pending",
                "acked",
                "retried",
                "dead-lettered",
                "retries waiting",
                "consumers",
                "dead (total)",
            ],
            rows,
            "groups",
        )
        if rows
        else '<p class="empty">no consumer groups</p>'
    )
    return (
        f'<section class="stream"><h2><a href="{h(stream_link(request, name))}">{h(name)}</a>'
        f" {_paused(st, None)}</h2>"
        f'<div class="facts">{fact_html}</div>{groups}</section>'
    )


def stream_page(request: Request, detail: StreamDetail, *, writes: bool, csrf: str) -> str:
    st = detail.status
    name = st.stream
    parts = [f"<h1>{h(name)} {_paused(st, None)}</h1>"]
    parts.append(
        f'<p class="meta">{number(st.length)} entries · {number(st.scheduled)} scheduled ·'
        f' <a href="{h(stream_link(request, name, "/dead-letters"))}">'
        f"{number(st.dead_letters)} dead letters</a>"
        + (f" · {st.partitions} partitions" if st.partitions is not None else "")
        + "</p>"
    )
    if writes:
        action = stream_link(request, name, "/pause")
        controls = [form_button(request, action, csrf, "pause stream", {}, "warn")]
        if "*" in st.paused:
            controls = [
                form_button(request, stream_link(request, name, "/resume"), csrf, "resume stream", {})
            ]
        parts.append(f'<div class="controls">{"".join(controls)}</div>')
    if st.paused:
        rows = [
            [
                h(scope if scope != "*" else "every group"),
                h(when(info.since_ms)),
                h(f"{info.user}@{info.host}" if info.host else ""),
                h(info.reason),
            ]
            for scope, info in sorted(st.paused.items())
        ]
        parts.append("<h2>Pauses</h2>" + table(["scope", "since", "by", "reason"], rows))
    for g in st.groups:
        header = f"<h2>group {h(g.name)} {_paused(st, g.name)}</h2>"
        if writes:
            if g.name in st.paused:
                header += form_button(
                    request, stream_link(request, name, "/resume"), csrf, "resume group", {"group": g.name}
                )
            else:
                header += form_button(
                    request,
                    stream_link(request, name, "/pause"),
                    csrf,
                    "pause group",
                    {"group": g.name},
                    "warn",
                )
        parts.append(header)
        parts.append(
            f'<p class="meta">lag {number(g.lag)} · pending {number(g.pending)} · retries waiting'
            f" {number(g.retries_waiting)} · last delivered {h(g.last_delivered_id or '-')}</p>"
        )
        owners = detail.owners.get(g.name)
        if owners:
            rows = [
                [number(o.partition), h(o.worker), h(duration_ms(max(0, o.until_ms - detail.server_ms)))]
                for o in owners
            ]
            parts.append("<h3>partition leases</h3>" + table(["partition", "worker", "lease left"], rows))
        for gc in detail.groups:
            if gc.group != g.name:
                continue
            where = f" of {h(gc.stream)}" if gc.stream != name else ""
            if gc.error:
                parts.append(f'<p class="error">consumers{where}: {h(gc.error)}</p>')
                continue
            if not gc.consumers:
                parts.append(f'<p class="empty">no consumers{where}</p>')
                continue
            rows = []
            for c in gc.consumers:
                leases = ", ".join(
                    f'<span class="lease" title="delivered {lease.deliveries}x, from the {h(lease.source)}'
                    f' stream">{h(lease.id)} ({h(duration_ms(lease.idle_ms))})</span>'
                    for lease in c.leases
                )
                more = c.pending - len(c.leases)
                if more > 0:
                    leases += f" and {number(more)} more"
                rows.append(
                    [
                        h(c.name),
                        number(c.pending),
                        h(duration_ms(c.idle_ms)),
                        h(duration_ms(c.inactive_ms)),
                        leases or "-",
                    ]
                )
            parts.append(
                f"<h3>consumers{where}</h3>"
                + table(
                    ["consumer", "pending", "idle", "since last read", "leases (entry, since renewed)"],
                    rows,
                    "consumers",
                )
            )
    if not st.groups:
        parts.append('<p class="empty">no consumer groups</p>')
    return "".join(parts)


def where_form(request: Request, stream: str, entry_id: str, group: str | None) -> str:
    return (
        "<h1>Where is my event</h1>"
        f'<form method="get" action="{h(request.url("/where"))}" class="filters">'
        f'<label>stream <input name="stream" value="{h(stream)}" required></label> '
        f'<label>id <input name="id" value="{h(entry_id)}" placeholder="1712345678901-0" required>'
        "</label> "
        f'<label>group <input name="group" value="{h(group or "")}" placeholder="every group"></label> '
        "<button>find</button></form>"
    )


def where_page(
    request: Request, stream: str, whereabouts: Any, entries: Sequence[Found],
    event_types: Sequence[type[Event]] | None,
) -> str:  # fmt: skip
    """What streamq.where found (`whereabouts`, a Whereabouts), or without it (None) each group's
    pending record from `entries`; then the entry itself, payload decoded."""
    parts = []
    if whereabouts is not None:
        facts = msgspec.structs.asdict(whereabouts)
        shown = [(k, h(v)) for k, v in facts.items() if k != "groups" and v not in (None, [])]
        parts.append("<h2>The event</h2>" + key_values(shown))
        fates = list(whereabouts.groups)
    else:
        parts.append(
            '<p class="meta">streamq.where is not installed: showing the entry and each group\'s pending'
            " record only (retries and dead letters are not searched)</p>"
        )
        fates = [fate for entry in entries for fate in entry.groups]
    rows = []
    for fate in fates:
        details = {
            k: v
            for k, v in msgspec.structs.asdict(fate).items()
            if k not in ("group", "state", "dead_letter") and v not in (None, "", 0)
        }
        cells = [h(f"{k}={v}") for k, v in details.items()]
        dead = getattr(fate, "dead_letter", None)
        if dead is not None:
            link = request.url(f"/stream/{segment(stream)}/dead-letters/{dead.dlq_id}")
            cells.append(f'<a href="{h(link)}">dead letter {h(dead.dlq_id)} ({h(dead.reason)})</a>')
        rows.append([h(fate.group), f'<span class="badge">{h(fate.state)}</span>', "<br>".join(cells)])
    parts.append(
        "<h2>In each group</h2>"
        + (table(["group", "state", "details"], rows) if rows else '<p class="empty">no groups</p>')
    )
    for entry in entries:  # the entry itself, below what became of it
        if entry.fields is None:
            parts.append(f'<p class="empty">{h(entry.stream)} holds no entry {h(entry.entry_id)} now</p>')
            continue
        decoded = decode_payload(entry.fields.get("d"), event_types)
        parts.append(
            f"<h2>Entry {h(entry.entry_id)} of {h(entry.stream)}</h2>{pretty_fields(entry.fields, decoded)}"
        )
    return "".join(parts)


def login_page(request: Request, next_url: str, failed: bool) -> str:
    error = '<p class="error">wrong token</p>' if failed else ""
    return (
        f'<h1>Log in</h1>{error}<form method="post" action="{h(request.url("/login"))}" class="login">'
        f'<input type="hidden" name="next" value="{h(next_url)}">'
        '<label>token <input type="password" name="token" autocomplete="current-password" autofocus>'
        "</label> <button>log in</button></form>"
    )


def error_page(title: str, message: str) -> str:
    return f'<h1>{h(title)}</h1><p class="error">{h(message)}</p>'
