"""Benchmarks: each hop done by bare clients beside the same hop through agentflux, in
one run, reported as the ratio of the two (see bench/README.md)."""
