"""Deprecated: ``gradwatch.numeric`` is private now (``gradwatch._numeric``).

What users import is exported by :mod:`gradwatch`; this name still imports, for one release.
"""

import warnings

from gradwatch._numeric import *  # noqa: F403
from gradwatch._numeric import __all__  # noqa: F401

warnings.warn(
    "gradwatch.numeric is deprecated and will be removed in the next release: "
    "import what you need from gradwatch",
    DeprecationWarning,
    stacklevel=2,
)
