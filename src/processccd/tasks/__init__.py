"""Pipeline tasks: each has a config dataclass and a run() returning a result dataclass."""
