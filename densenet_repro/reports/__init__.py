"""The reports people read: every notebook executed headlessly and rendered to reports/, and the index.

    python -m densenet_repro reports [--budget cpu] [--only 01] [--out reports] ...

Five modules, one per seam:

    render.py   one notebook: papermill -> the provenance block completed -> HTML (title, a link back
                to the index) -> <out>/NN_name.{ipynb,html}, written together; its index row
    index.py    the index rows (index.json): reading (a damaged file is one line), writing, merging a
                failed render with the last good one, the training behind a report, the runs in
                progress, and `stale_reports`
    page.py     index.html: what is reproduced on its first screen, the claims and coverage tables,
                one row per report with its inputs collapsed
    reader.py   the checks a reader makes of a rendered page (tests/test_report_reader.py)
    cli.py      the command: guards, the loop over notebooks, exit codes

Every name that used to live in densenet_repro/reports.py is importable from here.
"""

from densenet_repro.reports.cli import (COMMITTED, INTERRUPTED, build_parser, check_committed_budget, check_writable,
                                        default_data_root, main, resolve_device)
from densenet_repro.reports.index import (INDEX_HTML, INDEX_JSON, IndexDamagedError, merge_row, read_index,
                                          runs_in_progress, stale_reports, training_behind, training_text)
from densenet_repro.reports.page import coverage_html, index_html, write_index
from densenet_repro.reports.render import (MAX_HTML_BYTES, NOTEBOOK_RE, PROVENANCE_CELL_TAG, REQUIRED_PARAMETERS,
                                           ReportError, ReportWriteError, check_parameters, extract, failed_name,
                                           find_notebooks, image_descriptions, notebook_parameters, parse_parameter,
                                           render_notebook, report_title, to_html, write_report)

__all__ = [
    "COMMITTED", "INTERRUPTED", "build_parser", "check_committed_budget", "check_writable",
    "default_data_root", "main", "resolve_device", "INDEX_HTML", "INDEX_JSON", "IndexDamagedError", "merge_row",
    "read_index", "runs_in_progress", "stale_reports", "training_behind", "training_text", "write_index",
    "coverage_html", "index_html", "MAX_HTML_BYTES", "NOTEBOOK_RE", "PROVENANCE_CELL_TAG", "REQUIRED_PARAMETERS",
    "ReportError", "ReportWriteError", "check_parameters", "extract", "failed_name", "find_notebooks",
    "image_descriptions", "notebook_parameters", "parse_parameter", "render_notebook", "report_title", "to_html",
    "write_report",
]
