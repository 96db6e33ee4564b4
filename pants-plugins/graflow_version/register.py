"""Pants plugin: every ``python_distribution`` of this repository takes its version from
``libs/graflow_runtime/version.py``, the one place the version is written (docs/build.md).

Pants' generated ``setup.py`` gets ``version=<__version__>``; requirements of the ``extras_require``
in a BUILD file that are bare names (the project's own distributions, e.g. ``graflow[worker]`` ->
``graflow-worker``) are pinned to that same version. The version module is read through the engine,
so Pants invalidates the wheels when it changes.
"""

from __future__ import annotations

import ast
import re

from pants.backend.python.util_rules.package_dists import SetupKwargs, SetupKwargsRequest
from pants.base.glob_match_error_behavior import GlobMatchErrorBehavior
from pants.engine.fs import DigestContents, PathGlobs
from pants.engine.rules import Get, collect_rules, rule
from pants.engine.target import Target
from pants.engine.unions import UnionRule

VERSION_FILE = "libs/graflow_runtime/version.py"
_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class VersionNotFoundError(ValueError):
    """The version module has no ``__version__ = "..."`` assignment."""


def read_version(source: str) -> str:
    """The string assigned to ``__version__`` at the top level of ``source``."""
    for node in ast.parse(source, filename=VERSION_FILE).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise VersionNotFoundError(f'{VERSION_FILE} must assign a string literal: __version__ = "X.Y.Z"')


def pin_own_extras(extras: dict[str, list[str]], version: str) -> dict[str, list[str]]:
    return {
        extra: [f"{req}=={version}" if _BARE_NAME.match(req) else req for req in reqs]
        for extra, reqs in extras.items()
    }


class GraflowSetupKwargsRequest(SetupKwargsRequest):
    @classmethod
    def is_applicable(cls, _: Target) -> bool:
        return True


@rule
async def graflow_setup_kwargs(request: GraflowSetupKwargsRequest) -> SetupKwargs:
    contents = await Get(
        DigestContents,
        PathGlobs(
            [VERSION_FILE],
            glob_match_error_behavior=GlobMatchErrorBehavior.error,
            description_of_origin="the graflow_version plugin (pants-plugins/graflow_version)",
        ),
    )
    version = read_version(contents[0].content.decode())
    kwargs = request.explicit_kwargs
    if "version" in kwargs:
        raise ValueError(
            f"{request.target.address}: remove `version` from python_artifact(); it comes from {VERSION_FILE}"
        )
    kwargs["version"] = version
    if "extras_require" in kwargs:
        kwargs["extras_require"] = pin_own_extras(kwargs["extras_require"], version)
    return SetupKwargs(kwargs, address=request.target.address)


def rules():
    return [*collect_rules(), UnionRule(SetupKwargsRequest, GraflowSetupKwargsRequest)]
