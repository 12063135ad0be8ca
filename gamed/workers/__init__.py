"""``--workers N``: one twistd holds the listening sockets, N worker processes serve them.

``supervisor`` (the parent: spawn, restart, signals), ``listen`` (sockets bound by the
parent, adopted by a worker), ``worker`` (what a worker adds to its own service tree),
``relay`` (worker logs into the parent's log), ``web`` (the parent's merged HTTP port).
docs/cluster.md, section "--workers N".
"""
