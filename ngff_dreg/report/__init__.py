"""Visual registration report: an HTML page with PNG figures for an output scene."""

from ngff_dreg.report.html import REPORT_DIR, ReportLocationError, write_report

__all__ = ["REPORT_DIR", "ReportLocationError", "write_report"]
