"""`papaya-chat`, the terminal client: a full-screen chat on urwid and trio, and a plain mode.

Modules, from the wire up: `protocol` (pure), `transport` (TCP and WebSocket), `session`
(reconnect, resume, resend), `config`, `commands`, `formatting`, then the two frontends `tui`
and `plain`, and `app` (the command line). `bench_idle` measures the idle CPU of the TUI.
"""
