"""What counts as a test module, for the checks that no package ships one: every wheel
(``wheels_test.py``) and every PEX (``pex_test.py``).

Test modules are ``*_test.py``, ``*_test_support.py``, ``conftest.py`` and anything under a
``testing/`` folder (docs/build.md, "Test support"); they live in ``python_tests`` and
``python_test_utils`` targets, never in ``python_sources``, so no package that Pants builds carries
them.
"""

from __future__ import annotations

from pathlib import PurePosixPath

TEST_MODULE_SUFFIXES = ("_test.py", "_test_support.py")


def is_test_module(path: str) -> bool:
    """``path`` (``/``-separated, as in a wheel or PEX listing) is a test module or under ``testing/``."""
    parts = PurePosixPath(path).parts
    if not parts:
        return False
    name = parts[-1]
    return name.endswith(TEST_MODULE_SUFFIXES) or name == "conftest.py" or "testing" in parts[:-1]
