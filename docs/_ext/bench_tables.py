"""``{bench-table}``: a table of results, made from the JSON that ``volcache bench --json`` wrote.

The path is relative to the page. The scenario is the document's own (``scenario``:
``speed``, ``shared``, ``many-small``, ``tier``; without one, the pressure scenario), and the
table is the one the command printed, made by the same function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from volcache.bench import many_small, report, shared_scenario, speed, tiered


def table_text(document: dict[str, Any]) -> str:
    """The table ``volcache bench`` printed for this document's scenario."""
    scenario = document.get("scenario", "pressure")
    if scenario == "pressure":
        return report.table_of(document)
    if scenario == "speed":
        return speed.table(document["seconds"])
    if scenario == "shared":
        return shared_scenario.table(document)
    if scenario == "many-small":
        return many_small.table(document["results"])
    if scenario == "tier":
        return tiered.table(document)
    raise ValueError(f"a bench document of an unknown scenario: {scenario!r}")


class BenchTable(SphinxDirective):
    """The directive: one argument, the JSON file."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        source = Path(self.env.doc2path(self.env.docname)).parent / self.arguments[0]
        self.env.note_dependency(str(source))
        try:
            document = json.loads(source.read_text())
            text = table_text(document)
        except (OSError, ValueError, KeyError) as error:
            raise self.error(f"bench-table {self.arguments[0]}: {error}") from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("bench-table", BenchTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
