"""Deprecated: ``gradwatch.directions`` is private now (``gradwatch.check.directions``).

What users import is exported by :mod:`gradwatch`; this name still imports, for one release.
"""

import warnings

from gradwatch.check.directions import *  # noqa: F403
from gradwatch.check.directions import __all__  # noqa: F401

warnings.warn(
    "gradwatch.directions is deprecated and will be removed in the next release: "
    "import what you need from gradwatch",
    DeprecationWarning,
    stacklevel=2,
)
