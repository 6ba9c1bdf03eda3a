"""Deprecated: ``gradwatch.numeric`` is private now (``gradwatch.common.numeric``).

What users import is exported by :mod:`gradwatch`; this name still imports, for one release.
"""

import warnings

from gradwatch.common.numeric import *  # noqa: F403
from gradwatch.common.numeric import __all__  # noqa: F401

warnings.warn(
    "gradwatch.numeric is deprecated and will be removed in the next release: "
    "import what you need from gradwatch",
    DeprecationWarning,
    stacklevel=2,
)
