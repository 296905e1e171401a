"""Word wrapping with a hanging indent: a message's continuation lines start `indent` columns
in, so where one message ends and the next begins stays clear at any width.

`HangingIndentLayout` is an urwid text layout: the first row is laid out by urwid's standard
layout at the full width, the rest of the text (lines after a newline included) at the width
less the indent, each row prefixed with `indent` columns of padding. Offsets stay offsets into
the original text, so urwid's cursor and attribute handling are unchanged.
"""

from __future__ import annotations

from typing import Any

import urwid

#: Columns that continuation rows are indented by.
HANGING_INDENT = 2

_STANDARD = urwid.StandardTextLayout()


class HangingIndentLayout(urwid.TextLayout):
    """urwid's standard layout with every row after the first indented by `indent` columns."""

    def __init__(self, indent: int = HANGING_INDENT) -> None:
        self.indent = indent

    def __repr__(self) -> str:
        return f"<HangingIndentLayout indent={self.indent}>"

    def supports_align_mode(self, align: Any) -> bool:
        """Only left alignment: an indent means nothing centred."""
        return align in ("left", urwid.LEFT)

    def supports_wrap_mode(self, wrap: Any) -> bool:
        """The word and character wrapping modes."""
        return wrap in ("space", "any", urwid.SPACE, urwid.ANY)

    def layout(self, text: Any, width: int, align: Any, wrap: Any) -> Any:
        """Lay `text` out in `width` columns; too narrow for an indent, no indent."""
        rows = _STANDARD.layout(text, width, align, wrap)
        if len(rows) <= 1 or width <= self.indent + 1:
            return rows
        start = _row_end(rows[0])
        if start < len(text) and text[start] in (" ", "\n"):
            start += 1  # the break between the first row and the rest
        rest = _STANDARD.layout(text[start:], width - self.indent, align, wrap)
        return [
            rows[0],
            *([(self.indent, None), *(_shift(seg, start) for seg in row)] for row in rest),
        ]


def _row_end(row: list[Any]) -> int:
    """The text offset just past a laid-out row."""
    ends = [seg[-1] for seg in row if len(seg) >= 2 and seg[-1] is not None]
    return max(ends, default=0)


def _shift(segment: tuple[Any, ...], by: int) -> tuple[Any, ...]:
    if len(segment) == 3:
        return (segment[0], segment[1] + by, segment[2] + by)
    if segment[1] is None:
        return segment
    return (segment[0], segment[1] + by)


#: Shared by every message widget (the layout keeps no state).
HANGING = HangingIndentLayout()
