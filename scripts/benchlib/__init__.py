"""The benchmark behind `make bench` (scripts/bench.py): processes, scenarios and the report."""
