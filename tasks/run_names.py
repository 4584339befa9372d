"""Task-run names as the Prefect UI and console show them: the step and the slide ID, tile or channel.

Never a raw path and no square brackets: Prefect's console renders run names as rich markup, in which
``[/tmp/…/SYN1_2]`` is a closing tag (``prefect deployment run … --watch`` crashed on it with a
``MarkupError``) and ``[s3://…]`` a style that silently swallowed the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..core.io import storage


def _plain(text: str) -> str:
    return re.sub(r"[\[\]]", "", text)


def run_name(step: str, unit: Callable[[dict[str, Any]], Any]) -> Callable[[], str]:
    """A ``task_run_name`` callable: ``<step>-<unit>``, the unit taken from the task's parameters."""

    def name() -> str:
        from prefect.runtime import task_run

        return f"{step}-{_plain(str(unit(task_run.parameters)))}"

    name.__name__ = f"{step}_run_name"
    return name


def folder_name(url: str) -> str:
    """The last component of a slide's or tile's URL (the slide ID for a slide folder)."""
    return storage.basename(storage.normalize(url).rstrip("/")) or url
