"""Shared low-level helpers every wing may use: the material's formulas, whose error an exception
is, and keeping the user's state as it was.
"""
