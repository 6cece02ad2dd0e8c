"""cronpy: a job runner driven by a declarative YAML jobs file."""

__version__ = "0.1.0"
