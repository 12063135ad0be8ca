"""A gamed cluster on Redis: rooms, sessions and games across processes (docs/cluster.md)."""
