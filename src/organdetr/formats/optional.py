"""Optional dependencies of the format routes: a one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util

from organdetr.runtime.errors import InputError

_PIP_NAMES = {"highdicom": "highdicom", "dicomweb_client": "dicomweb-client"}


def require(module: str, flag: str, extra: str = "dicom") -> None:
    """Raise a one-line :class:`InputError` when ``module`` (needed by option ``flag``) is not installed."""
    if importlib.util.find_spec(module) is None:
        raise InputError(
            None,
            f"{flag} needs {_PIP_NAMES.get(module, module)}: pip install 'organdetr[{extra}]'",
        )
