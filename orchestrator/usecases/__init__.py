"""The use cases: what Capsule does, for every front door (the CLI today; the HTTP API and the
scheduler next).

One module per capability: `repository` (create, unlock, rebuild the index), `backup`, `restore`,
`snapshots` (list, resolve, read one file), `forget` (retention policies, forgetting and tagging
snapshots), `prune` (give back the space no snapshot uses), `destinations` (the off-site copies:
add, list, try, remove), `verify`, `drill` (a restore drill by hand), `jobs` (the job and audit
queries, the event log's upkeep and the worker), and `serve` (Capsule as a service until a signal
stops it). Each takes a typed request and returns a typed result holding
everything a front door shows: a front door parses, calls one use case and renders its result, and
never reads the repository or the event log itself. Nothing here knows about terminals or HTTP
(`serve` is given its front door).

The event store, the projections and Dramatiq take about a second to load: the use cases import
them when they run, so that a command that needs none of them starts quickly.
"""
