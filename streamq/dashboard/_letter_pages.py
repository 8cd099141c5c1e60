"""The dead-letter pages' bodies: the filtered listing, one letter, and payloads shown for people.

Every value from Redis (errors, tracebacks, payloads, names) goes through `h`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..deadletter import DeadLetter
from ._html import form_button, h, hex_dump_block, key_values, number, pretty, stream_link, table, when
from ._http import Request, segment
from ._letters import REASONS, Decoded, LetterPage


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
    base = stream_link(request, stream, "/dead-letters")
    group_options = "".join(
        f'<option value="{h(g)}"{" selected" if g == group else ""}>{h(g)}</option>' for g in groups
    )
    reason_options = "".join(
        f'<option value="{h(r)}"{" selected" if r == reason else ""}>{h(r)}</option>' for r in REASONS
    )
    parts = [
        f'<h1>Dead letters of <a href="{h(stream_link(request, stream))}">{h(stream)}</a></h1>',
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
    base = stream_link(request, stream, "/dead-letters")
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
            + form_button(
                request, f"{base}/replay", csrf, "replay to its group", {"id": letter.dlq_id, "back": "1"}
            )
            + form_button(
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
