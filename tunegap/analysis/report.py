"""Where the names of the earlier `tunegap.analysis.report` went (an import of one of them
is an ImportError saying where): how a value and a cell read moved to
`tunegap.analysis.formatting`, every sentence a study writes to `tunegap.runner.report_text`.
"""

from __future__ import annotations

MOVED = {
    "DEFAULT_TABLE_COLUMNS": "tunegap.analysis.formatting",
    "describe": "tunegap.analysis.formatting",
    "format_number": "tunegap.analysis.formatting",
    "format_value": "tunegap.analysis.formatting",
    "markdown_table": "tunegap.analysis.formatting",
    "baseline_summary": "tunegap.runner.report_text",
    "baseline_warnings": "tunegap.runner.report_text",
    "best_epoch_warning": "tunegap.runner.report_text",
}


def __getattr__(name: str) -> object:
    if name in MOVED:
        # ImportError, not AttributeError: `from tunegap.analysis.report import X` shows it
        # as it is, one line naming the new module.
        raise ImportError(f"tunegap.analysis.report.{name} moved: import it from {MOVED[name]}")
    raise AttributeError(f"module 'tunegap.analysis.report' has no attribute {name!r}")
