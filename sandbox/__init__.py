"""Dev tooling, not the product: a UtilityAPI stand-in on loopback and a sample-data builder.

`collections_app` never imports this package; `make run`, the tests and the benchmark do.
"""
