"""The README's code blocks, by name, so tests run exactly what the README tells people to type.

Every fenced block in README.md is preceded by a marker naming it::

    <!-- readme: quickstart -->
    ```bash
    ...
    ```

``readme_test.py`` checks that every named block is run somewhere: by a test that asks for it with
``readme_block("name")``, by ``.ci/run`` (a ``# readme: name`` comment and the same commands), or
listed there as not runnable on these machines (docker, kubectl) or as plain text (a tree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

_MARKER = re.compile(r"^<!-- readme: ([a-z0-9-]+) -->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")


class ReadmeFormatError(ValueError):
    """A code block without a marker, a marker without a block, or a name used twice."""


@dataclass(frozen=True)
class Block:
    name: str
    language: str
    text: str
    line: int  # 1-based line of the opening fence

    def commands(self) -> list[str]:
        """Command lines: continuations joined, comments and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        lines = (line.split(" #", 1)[0].strip() for line in joined.splitlines())
        return [line for line in lines if line and not line.startswith("#")]


def parse(text: str) -> dict[str, Block]:
    blocks: dict[str, Block] = {}
    lines = text.splitlines()
    pending: tuple[str, int] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = _MARKER.match(line)
        fence = _FENCE.match(line)
        if marker:
            if pending:
                raise ReadmeFormatError(f"line {pending[1]}: marker {pending[0]!r} has no code block")
            pending = (marker.group(1), index + 1)
        elif fence:
            if pending is None:
                raise ReadmeFormatError(
                    f"line {index + 1}: code block without a '<!-- readme: NAME -->' marker"
                )
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise ReadmeFormatError(f"line {index + 1}: code block is never closed")
            name = pending[0]
            if name in blocks:
                raise ReadmeFormatError(f"line {pending[1]}: block name {name!r} is used twice")
            blocks[name] = Block(name, fence.group(1), "\n".join(lines[index + 1:end]) + "\n", index + 1)
            pending = None
            index = end
        elif pending and line.strip():
            raise ReadmeFormatError(
                f"line {pending[1]}: marker {pending[0]!r} is not followed by a code block"
            )
        index += 1
    if pending:
        raise ReadmeFormatError(f"line {pending[1]}: marker {pending[0]!r} has no code block")
    return blocks


def readme_blocks() -> dict[str, Block]:
    return parse(README.read_text())


def readme_block(name: str) -> Block:
    blocks = readme_blocks()
    if name not in blocks:
        raise KeyError(f"README.md has no block named {name!r} (names: {', '.join(blocks)})")
    return blocks[name]
