"""gamed-bench: a load generator for the gamed protocol."""
