"""Deprecated: ``gradwatch.directions`` is private now (``gradwatch._directions``).

What users import is exported by :mod:`gradwatch`; this name still imports, for one release.
"""

import warnings

from gradwatch._directions import *  # noqa: F403
from gradwatch._directions import __all__  # noqa: F401

warnings.warn(
    "gradwatch.directions is deprecated and will be removed in the next release: "
    "import what you need from gradwatch",
    DeprecationWarning,
    stacklevel=2,
)
