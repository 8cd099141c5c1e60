"""HTML pieces: escaping, the page layout, numbers and durations for people, and the SVG sparklines.

Everything that comes from Redis or from a request (stream and group names, payloads, errors, tracebacks)
is untrusted and passes through `h` (html.escape, quotes included) on its way into a page; the pages build
their markup only from literals and `h`'d values. No inline script or style: the Content-Security-Policy
forbids both, and the charts are SVG drawn with presentation attributes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ._http import Request, segment


def h(value: object) -> str:
    """`value` as text safe anywhere in HTML (element content and quoted attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def duration_ms(ms: int | None) -> str:
    """A duration for people: 850ms, 12.5s, 4m 05s, 3h 02m, 2d 04h."""
    if ms is None:
        return "-"
    if ms < 1_000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def when(ms: int) -> str:
    """A Unix time in ms as UTC, to the second; '-' for 0 (unknown)."""
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rate(value: float) -> str:
    if value == 0:
        return "0/s"
    if value < 10:
        return f"{value:.2f}/s"
    return f"{value:,.0f}/s"


def pretty(value: Any) -> str:
    """A decoded payload as indented JSON (keys kept in their order; anything odd as its repr)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=repr)


def sparkline(points: Sequence[tuple[float, float]], window_s: float, label: str) -> str:
    """An inline SVG of (seconds ago, per second) points, newest on the right, with the latest rate beside
    it. The time axis spans the samples there are (at most the window), so a chart fills from the first
    refresh on; too few samples draw a dotted line and say so in the tooltip."""
    width, height = 120, 24
    shown = [(ago, value) for ago, value in points if ago <= window_s]
    peak = max((value for _, value in shown), default=0.0)
    latest = shown[-1][1] if shown else 0.0
    span = max((ago for ago, _ in shown), default=0.0)
    title = f"{label}: {rate(latest)} now, peak {rate(peak)} over the last {duration_ms(int(span * 1000))}"
    if len(shown) < 2 or span <= 0:
        title = f"{label}: not enough samples yet (one per refresh while someone watches)"
        line = (
            f'<line x1="0" y1="{height - 1.5}" x2="{width}" y2="{height - 1.5}" stroke="currentColor"'
            ' stroke-width="1" stroke-dasharray="2 3"/>'
        )
    else:
        scale = (height - 3) / peak if peak > 0 else 0.0
        coords = " ".join(
            f"{width - (ago / span) * width:.1f},{height - 1.5 - value * scale:.1f}" for ago, value in shown
        )
        line = f'<polyline points="{h(coords)}" fill="none" stroke="currentColor" stroke-width="1.5"/>'
    return (
        f'<span class="spark" title="{h(title)}"><svg width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{h(title)}">{line}</svg>'
        f'<span class="rate">{h(rate(latest))}</span></span>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """A table from headers (escaped here) and cells (already HTML: each page escapes its values)."""
    head = "".join(f"<th>{h(name)}</th>" for name in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{h(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def layout(
    title: str,
    body: str,
    *,
    root: str,
    refresh_ms: int | None = None,
    writes: bool,
    viewer: str | None,
    csrf: str = "",
    notice: str = "",
) -> str:
    """The whole page: head (our CSS and JS only), navigation, an optional notice, the body. A page with
    `refresh_ms` is refreshed in place by dashboard.js (its <main> swapped), never reloaded."""
    refresh = f' data-refresh-ms="{int(refresh_ms)}"' if refresh_ms else ""
    mode = "writes allowed" if writes else "read-only"
    logout = ""
    if viewer == "token":
        logout = (
            f'<form method="post" action="{h(root)}/logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}"><button class="link">log out</button></form>'
        )
    shown_notice = f'<p class="notice" role="status">{h(notice)}</p>' if notice else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} - streamq</title>"
        '<link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{h(root)}/static/dashboard.css">'
        f'<script src="{h(root)}/static/dashboard.js" defer></script></head>'
        f"<body{refresh}>"
        f'<header><a class="brand" href="{h(root)}/">streamq</a>'
        f'<nav><a href="{h(root)}/">Overview</a><a href="{h(root)}/where">Where is my event</a></nav>'
        f'<span class="mode {"writes" if writes else "readonly"}">{mode}</span>{logout}</header>'
        f'{shown_notice}<main id="live">{body}</main></body></html>'
    )


RAW_BYTES_SHOWN = 16 * 1024  # bytes of a payload shown as hex; the rest is counted


def hex_dump(data: bytes, limit: int = RAW_BYTES_SHOWN) -> str:
    """16 bytes a line: offset, hex, printable ASCII (anything else as '.')."""
    lines = []
    for at in range(0, min(len(data), limit), 16):
        chunk = data[at : at + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{at:08x}  {chunk.hex(' '):<47}  {text}")
    if len(data) > limit:
        lines.append(f"... {len(data) - limit:,} more bytes")
    return "\n".join(lines)


def hex_dump_block(data: bytes) -> str:
    return f'<pre class="hex">{h(hex_dump(data))}</pre>'


def stream_link(request: Request, stream: str, suffix: str = "") -> str:
    return request.url(f"/stream/{segment(stream)}{suffix}")


def form_button(
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


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    return '<dl class="facts-list">' + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
