"""The worker's tests run against the same kind of stack as the service's: its fixtures, shared by import.

(A session that runs tests/service and tests/worker together sets up one stack for each directory.)
"""

from tests.service.conftest import *  # noqa: F403

del pytest_report_header  # noqa: F821  (printed once, by tests/service)
