"""Reports: one document model (:class:`Report`) rendered to a self-contained HTML page or
to Markdown, the terminal table formatter every command prints with, and the figures.

Fill a report in reading order and write it::

    from normlab.report import Column, Report

    report = Report("normlab tutorial", subtitle="LeNet on Fashion-MNIST, seed 0")
    report.section("Covariate shift")
    report.paragraph("Train and test features differ in location and scale.")
    report.figure(fig_or_png_path, caption="Before and after standardisation.")
    report.table(rows, [Column("norm"), Column("acc", "test accuracy", fmt="percent")],
                 caption="Final epoch.")
    report.write_html(run_dir / "report.html")   # one file, figures embedded
    report.write_markdown(run_dir / "report.md")  # figures as PNG files beside it

Figures come from :mod:`normlab.report.plots` (imported on its own: it loads matplotlib).
"""

from normlab.report.document import Report, slugify
from normlab.report.tables import Column, format_cell, format_table

__all__ = ["Column", "Report", "format_cell", "format_table", "slugify"]
