"""What a training-loop integration needs, without importing any framework.

``gradwatch.callbacks`` (the Lightning callback) is built on these modules and on gradwatch's
other public names only; another integration (a plain loop, another framework) can use the same:

- :mod:`gradwatch.integration.objective`: J from a module's own training step, evaluated in a
  quiet room (no logger, no progress bar, the module's state put back);
- :mod:`gradwatch.integration.faults`: whose error an exception is (``raised_in_users_code``,
  ``CALLS_BACKWARD``), the reason and bug-report text, the failed report of a check that raised;
- :mod:`gradwatch.integration.options`: an integration's own option rules (a schedule, a name, a
  refused keyword with the option meant); the engine's are :mod:`gradwatch.arguments`;
- :mod:`gradwatch.integration.text`: a report read for a log (rows worst first, the console line,
  markdown, ``coverage``);
- :mod:`gradwatch.integration.scalars`: the tags and the numbers logged, TensorBoard's Custom
  Scalars layout;
- :mod:`gradwatch.integration.card`: the card, an image of a run's checks.

Nothing in the engine imports this package (``lint-imports``, CONTRIBUTING.md).

Example:
    >>> import numpy as np, gradwatch
    >>> from gradwatch.integration import text
    >>> report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
    >>> text.coverage(report)
    'pass on 100% of components'
"""
