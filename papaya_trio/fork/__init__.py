"""Fork mode: papayaChat's architecture done right, a process pair per client.

`serve --mode fork` runs the same chat service as trio mode, with processes instead of tasks,
so that task scheduling can be compared with process scheduling on identical work:

- `parent`: the supervising parent; accepts, forks a process per connection, relays wake-ups,
  reaps, and stops every client's pair on SIGTERM.
- `overload`: what the parent does instead of forking: refusing connections over the limit
  itself, and pausing when descriptors, memory or processes run out.
- `client`: a connection's process; authenticates (`auth`), becomes the client's RECV
  (`recv`) and forks its SEND (`send`).
- `logfile`: the shared log as each process opens it (flock, dedupe, group commit under
  ``fsync = "always"``), in trio mode's record format.
- `wakeup`: how SEND processes learn about appends, and why no wake-up is lost.
- `signals`, `connection`: signals as pipe bytes (and dying with the parent), and the socket
  with poll()-based deadlines.

The children use blocking system calls and no trio; the protocol, the records, the rules and
the configuration are trio mode's own modules, so both modes behave identically on the wire and
share the log file format.
"""
