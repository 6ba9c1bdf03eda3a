"""pytest's collection: the deprecated module names (gradwatch.numeric, …) are not collected for
doctests; importing them warns, which tests/test_public.py shows."""

collect_ignore = ["gradwatch/numeric.py", "gradwatch/directions.py", "gradwatch/sampling.py"]
