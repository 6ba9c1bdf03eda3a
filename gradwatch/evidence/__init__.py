"""What the measurements show: J's noise, the components' readings, re-checks and escalation, and
the tensor test.
"""
