"""The pages' bodies, as HTML: every value from Redis or the request goes through `h`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..deadletter import DeadLetter
from ..inspect import StreamStatus
from ._data import Overview, Rates, StreamDetail, StreamView
from ._html import duration_ms, h, hex_dump_block, number, pretty, sparkline, table, when
from ._http import Request, segment
from ._letters import REASONS, Decoded, LetterPage


def _stream_link(request: Request, stream: str, suffix: str = "") -> str:
    return request.url(f"/stream/{segment(stream)}{suffix}")


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
            f'<section class="stream"><h2><a href="{h(_stream_link(request, name))}">{h(name)}</a></h2>'
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
            f'<a href="{h(_stream_link(request, name, "/dead-letters"))}">{number(st.dead_letters)}</a>',
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
        f'<section class="stream"><h2><a href="{h(_stream_link(request, name))}">{h(name)}</a>'
        f" {_paused(st, None)}</h2>"
        f'<div class="facts">{fact_html}</div>{groups}</section>'
    )


def _form(
    request: Request,
    action: str,
    csrf: str,
    button: str,
    fields: dict[str, str],
    css: str = "",
    confirm: str = "",
) -> str:
    hidden = "".join(f'<input type="hidden" name="{h(k)}" value="{h(v)}">' for k, v in fields.items())
    ask = f' data-confirm="{h(confirm)}"' if confirm else ""
    return (
        f'<form method="post" action="{h(action)}" class="inline"{ask}>'
        f'<input type="hidden" name="csrf" value="{h(csrf)}">{hidden}'
        f'<button class="{h(css)}">{h(button)}</button></form>'
    )


def stream_page(request: Request, detail: StreamDetail, *, writes: bool, csrf: str) -> str:
    st = detail.status
    name = st.stream
    parts = [f"<h1>{h(name)} {_paused(st, None)}</h1>"]
    parts.append(
        f'<p class="meta">{number(st.length)} entries · {number(st.scheduled)} scheduled ·'
        f' <a href="{h(_stream_link(request, name, "/dead-letters"))}">'
        f"{number(st.dead_letters)} dead letters</a>"
        + (f" · {st.partitions} partitions" if st.partitions is not None else "")
        + "</p>"
    )
    if writes:
        action = _stream_link(request, name, "/pause")
        controls = [_form(request, action, csrf, "pause stream", {}, "warn")]
        if "*" in st.paused:
            controls = [_form(request, _stream_link(request, name, "/resume"), csrf, "resume stream", {})]
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
                header += _form(
                    request, _stream_link(request, name, "/resume"), csrf, "resume group", {"group": g.name}
                )
            else:
                header += _form(
                    request,
                    _stream_link(request, name, "/pause"),
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


def letters_page(
    request: Request,
    stream: str,
    page: LetterPage,
    *,
    groups: Sequence[str],
    group: str | None,
    reason: str | None,
    writes: bool,
    csrf: str,
) -> str:
    base = _stream_link(request, stream, "/dead-letters")
    group_options = "".join(
        f'<option value="{h(g)}"{" selected" if g == group else ""}>{h(g)}</option>' for g in groups
    )
    reason_options = "".join(
        f'<option value="{h(r)}"{" selected" if r == reason else ""}>{h(r)}</option>' for r in REASONS
    )
    parts = [
        f'<h1>Dead letters of <a href="{h(_stream_link(request, stream))}">{h(stream)}</a></h1>',
        f'<form method="get" action="{h(base)}" class="filters">'
        f'<label>group <select name="group"><option value="">every group</option>{group_options}</select>'
        f'</label> <label>reason <select name="reason"><option value="">every reason</option>'
        f"{reason_options}</select></label> <button>filter</button></form>",
        f'<p class="meta">{number(page.total)} dead letters in all;'
        f" {number(page.scanned)} read for this page</p>",
    ]
    if not page.letters:
        parts.append('<p class="empty">no dead letters here</p>')
    else:
        rows = []
        for letter in page.letters:
            link = request.url(f"/stream/{segment(stream)}/dead-letters/{letter.dlq_id}")
            pick = f'<input type="checkbox" name="id" value="{h(letter.dlq_id)}" aria-label="select">'
            rows.append(
                [
                    *([pick] if writes else []),
                    f'<a class="letter" href="{h(link)}">{h(letter.dlq_id)}</a>',
                    h(letter.group),
                    f'<span class="badge">{h(letter.reason)}</span>',
                    number(letter.attempts),
                    h(when(letter.last_failure_ms)),
                    f'<span class="clip">{h(letter.error_type)}: {h(letter.error)}</span>',
                ]
            )
        headers = [*([""] if writes else []), "id", "group", "reason", "attempts", "last failure", "error"]
        listing = table(headers, rows, "letters")
        if writes:
            listing = (
                f'<form method="post" action="{h(base)}/replay" class="bulk">'
                f'<input type="hidden" name="csrf" value="{h(csrf)}">{listing}'
                "<button>replay selected</button> "
                f'<button class="danger" formaction="{h(base)}/purge"'
                ' data-confirm="Delete the selected dead letters for good?">purge selected</button></form>'
            )
        parts.append(listing)
    if page.next_after:
        more = request.url(
            f"/stream/{segment(stream)}/dead-letters", group=group, reason=reason, after=page.next_after
        )
        parts.append(f'<p><a class="next" href="{h(more)}">next page</a></p>')
    return "".join(parts)


def letter_page(
    request: Request, stream: str, letter: DeadLetter, decoded: Decoded, *, writes: bool, csrf: str
) -> str:
    base = _stream_link(request, stream, "/dead-letters")
    facts = [
        ("dead-letter id", h(letter.dlq_id)),
        ("stream", h(letter.stream)),
        (
            "event id",
            f'<a href="{h(request.url("/where", stream=stream, id=letter.id, group=letter.group))}">'
            f"{h(letter.id)}</a>",
        ),
        ("group", h(letter.group)),
        ("consumer", h(letter.consumer)),
        ("reason", f'<span class="badge">{h(letter.reason)}</span>'),
        ("detail", h(letter.detail)),
        ("attempts", number(letter.attempts)),
        ("first failure", h(when(letter.first_failure_ms))),
        ("last failure", h(when(letter.last_failure_ms))),
    ]
    headers = getattr(letter, "headers", None)
    if isinstance(headers, dict) and headers:
        facts.append(("headers", "<br>".join(f"{h(k)}: {h(v)}" for k, v in headers.items())))
    parts = [
        f'<h1>Dead letter {h(letter.dlq_id)} of <a href="{h(base)}">{h(stream)}</a></h1>',
        '<dl class="facts-list">' + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>",
    ]
    if writes:
        parts.append(
            '<div class="controls">'
            + _form(
                request, f"{base}/replay", csrf, "replay to its group", {"id": letter.dlq_id, "back": "1"}
            )
            + _form(
                request,
                f"{base}/purge",
                csrf,
                "purge",
                {"id": letter.dlq_id},
                "danger",
                "Delete this dead letter for good?",
            )
            + "</div>"
        )
    parts.append(f'<h2>Error</h2><pre class="error">{h(letter.error_type)}: {h(letter.error)}</pre>')
    if letter.traceback:
        parts.append(f'<h2>Traceback</h2><pre class="traceback">{h(letter.traceback)}</pre>')
    parts.append(_payload(letter, decoded))
    return "".join(parts)


def pretty_fields(fields: dict[str, bytes], decoded: Decoded) -> str:
    """A stream entry: its payload field decoded (see _payload), its other fields as text."""
    others = [(name, _field_text(name, value)) for name, value in fields.items() if name != "d"]
    shown = key_values(others) if others else ""
    payload = fields.get("d")
    if payload is not None:
        shown += _decoded(decoded, len(payload)) + f"<h3>raw bytes</h3>{hex_dump_block(payload)}"
    return shown


def _field_text(name: str, value: bytes) -> str:
    """A field of a stream entry as HTML: the headers map (msgpack) one per line, anything else as text."""
    if name == "headers":
        try:
            headers = msgspec.msgpack.decode(value, type=dict[str, str])
        except (msgspec.DecodeError, ValueError, RecursionError):
            pass
        else:
            return "<br>".join(f"{h(k)}: {h(v)}" for k, v in headers.items())
    return h(value.decode(errors="replace"))


def _decoded(decoded: Decoded, size: int) -> str:
    if decoded.kind == "event":
        return (
            f'<h2>Payload <span class="meta">{h(decoded.event_type)}, {number(size)} bytes</span></h2>'
            f'<pre class="payload">{h(pretty(decoded.value))}</pre>'
        )
    if decoded.kind == "msgpack":
        return (
            f'<h2>Payload <span class="meta">msgpack, no importable event class, {number(size)} bytes'
            f'</span></h2><pre class="payload">{h(pretty(decoded.value))}</pre>'
        )
    if decoded.kind == "raw":
        return f'<h2>Payload <span class="meta">not msgpack, {number(size)} bytes</span></h2>'
    return '<h2>Payload</h2><p class="empty">the entry had no payload field</p>'


def _payload(letter: DeadLetter, decoded: Decoded) -> str:
    shown = _decoded(decoded, len(letter.payload) if letter.payload is not None else 0)
    if letter.payload is not None:
        shown += f"<h3>raw bytes</h3>{hex_dump_block(letter.payload)}"
    if letter.raw_fields is not None:
        shown += f"<h3>the entry's fields (msgpack)</h3>{hex_dump_block(letter.raw_fields)}"
    return shown


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


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    return '<dl class="facts-list">' + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
