"""`flashfit doctor`: troubleshooting checks against a running deployment.

Each check is a small function (checks/) registered under a name (registry.py; selection.py
lists them in report order) that takes a DoctorContext (context.py: config, Docker client, HTTP
client, the project's containers) and returns a Finding: ok, warning or failure, a one-line
summary, a fix hint and details. The runner (runner.py) runs them concurrently, each under its
own timeout; a check that crashes or hangs becomes a failure result, never a traceback.
report.py turns results into lines; nothing here prints.
"""

from flashfit_ops.doctor.result import FAILURE, OK, WARNING, CheckResult, Finding, exit_code

__all__ = ["FAILURE", "OK", "WARNING", "CheckResult", "Finding", "exit_code"]
