"""The prose of docs/benchmarks.md that does not come from one run's numbers."""

INTRO = ["(draft)"]
HOW_TO_RUN = ["## How to run", "", "`make bench`"]
DECISIONS = ["## Decisions", "", "(draft)"]
CHANGES = ["## Changes made for performance", "", "(draft)"]
