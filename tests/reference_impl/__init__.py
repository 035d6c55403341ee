"""Reference implementations that production no longer calls, kept as independent truths for the tests.

Each was the production code before a faster (batched, compiled or vectorised) version replaced it; the
tests pin the production version against these. One module per production concern.
"""
