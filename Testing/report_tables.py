"""Test helper: read back the per-modality tables of a report written by bsafusion.evaluation.report.

Shared by evaluation/test_report.py and evaluation/test_benchmark.py (pytest puts this folder on ``sys.path``: it holds the root conftest.py), so
both check the report the way a reader sees it, through one parser.
"""

from __future__ import annotations

import re

_MODALITY_HEADING = re.compile(r"#+ (\w+) \(\d+ cases?\)$")


def parse_report_tables(markdown: str) -> dict[str, dict[str, dict[str, str]]]:
    """modality -> method -> column header -> raw cell text (bold markers kept).

    A table belongs to the latest heading ``<#...> <modality> (<n> cases)``; any other heading
    ends it, so tables under other sections (failures) are not read.
    """
    tables: dict[str, dict[str, dict[str, str]]] = {}
    modality, header = None, None
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = _MODALITY_HEADING.match(line)
            modality, header = (heading.group(1) if heading else None), None
        elif modality and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                tables.setdefault(modality, {})[cells[0]] = dict(zip(header, cells))
    return tables
