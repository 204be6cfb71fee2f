"""Reports of search runs: Pareto plot, front table, predictor error per generation."""

from smnas_trt.report.run_report import ReferenceVerdict, ReportFiles, reference_verdicts, write_report

__all__ = ["ReferenceVerdict", "ReportFiles", "reference_verdicts", "write_report"]
