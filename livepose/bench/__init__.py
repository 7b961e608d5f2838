"""Benchmarks behind ``livepose bench …`` (one module per benchmark; results in
docs/benchmarks.md). Peers and optional SDKs are imported inside the functions that use them,
so a missing one is reported, not fatal."""
