"""Deprecated: ``gradwatch.sampling`` is private now (``gradwatch.check.sampling``).

What users import is exported by :mod:`gradwatch`; this name still imports, for one release.
"""

import warnings

from gradwatch.check.sampling import *  # noqa: F403
from gradwatch.check.sampling import __all__  # noqa: F401

warnings.warn(
    "gradwatch.sampling is deprecated and will be removed in the next release: "
    "import what you need from gradwatch",
    DeprecationWarning,
    stacklevel=2,
)
