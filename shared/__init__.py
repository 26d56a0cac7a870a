"""Code both sides import: feature spec, schemas, statistics and DP math. Pure: no I/O."""

__version__ = "0.1.0"
