"""Shared low-level helpers every wing may use: the material's formulas, whose error an exception
is, keeping the user's state as it was, the renderers' words for the report, the version, and
what the first check would pay, paid at import.
"""
