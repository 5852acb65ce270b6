"""
The commands and files our documents show, read out of their reStructuredText, so that
tests run what a reader would type and fail as soon as a document and the code part ways.
"""

from __future__ import annotations

import re
import textwrap


def section(text: str, title: str) -> str:
    """The body of the section headed ``title`` (up to the next heading of any level)."""
    heading = re.search(rf"^{re.escape(title)}\n[-=~^]+\n", text, re.MULTILINE)
    assert heading is not None, f"no section {title!r}"
    rest = text[heading.end() :]
    following = re.search(r"^\S.*\n[-=~^]{3,}\n", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def literal_blocks(text: str) -> list[str]:
    """Each literal block (the indented lines after a paragraph ending ``::``), dedented."""
    blocks = []
    for match in re.finditer(r"::\n\n((?:(?: {2,}.*)?\n)+)", text):
        blocks.append(textwrap.dedent(match.group(1)).strip("\n"))
    return blocks


def commands(block: str) -> list[str]:
    """The shell commands of a literal block, backslash continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def unit_settings(unit: str) -> dict[str, str]:
    """The ``Key=value`` settings of a systemd unit (the last of a repeated key)."""
    return dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", " "))
    )
