"""``python -m nsync.report RUN_DIR... [--out report.html]``

Writes one self-contained HTML page (or Markdown with PNGs) with the tables and figures of a
set of fit, controls, analysis and judge folders.
"""

from nsync.analysis.report import main
from nsync.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
