"""`papaya-chat`, the terminal client: a full-screen chat on urwid and trio, and a plain mode.

Modules, from the wire up: the shared client protocol `papaya_trio.protocol.client` (pure),
`transport` (TCP and WebSocket), `session` (reconnect, resume, resend), `config`, `commands`,
`formatting`, `wrapping` (the hanging indent), then the two frontends `tui` and `plain`, and
`app` (the command line). `bench_idle` measures the idle CPU of the TUI.
"""
