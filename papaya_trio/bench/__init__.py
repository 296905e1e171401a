"""The bench of issue 7: the paper's experiment, trio tasks against forked processes.

Theory of operation. A *sweep* runs one *trial* per (connections, mode, repeat). A trial
starts the server under test in a cgroup of its own, pinned to one CPU (`deployment`);
starts the load generator (`loadgen`) pinned to the other CPUs; waits until every
connection is open and a warm-up has passed; then samples the CPU time of every process
the server started every 500 ms (`sampler`, `processes`: a daemon that detached is still
the server's). Per trial we keep the mean CPU % (of one core, like `top`) and its
coefficient of variation (`stats`); per (connections, mode) we aggregate over repeats
(`runner`), and `report` / `plot` render the table, JSON, CSV and the PNG figure.

The ``chat`` profile runs the same sweep against the real server (trio and fork mode) with
`chatload`, a room of N clients (native or papayaChat dialect, `chatwire`) measuring
delivery latency and losses; on the Redis store the server can be K nodes sharing one
Redis that the trial starts.

Modules: `stats` (pure statistics), `paper` (published figures), `sink_common`,
`sink_trio` and `sink_fork` (the paper's two sink servers), `loadgen` and `chatload` (the
two load generators), `chatwire` (the chat clients' dialects), `workloads` (what differs
between profiles, and `SweepConfig`), `sampler`, `servers` (how to start a mode's server),
`deployment` (starting and stopping one trial's server, nodes and Redis), `cgroup` and
`processes` (which processes are the server's), `system` (open-file limit), `runner`,
`report`, `plot`, `progress`, `command` (the `papaya-trio bench` sub-command).
"""
