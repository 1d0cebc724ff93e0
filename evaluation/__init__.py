"""Feasibility report: do the index's vectors group products by category, and how well
does the service's Categorizer decide? Reads everything from an index (never re-encodes).

Run: ``python -m evaluation report --index DIR --out DIR``.
"""
