"""One retry rule for every task that retries: transient I/O only.

A task retries when storage or the cluster hiccuped — a dropped connection, a timeout, an S3 5xx or
throttling (:func:`shadeflow.core.errors.is_transient`). A bad input (a ``ValueError`` such as every
shadeflow input error, a missing or refused path) or a bug fails the same way every time, so it runs
once and its error reaches the person without a wasted retry and its delay.
"""

from __future__ import annotations

from ..core.errors import is_transient


def retry_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry only a transient failure (a plain function, as Prefect
    requires)."""
    try:
        state.result()
    except BaseException as exc:  # the failed run's exception, re-raised by the state
        return is_transient(exc)
    return False


#: the retry settings of every task that retries: ``@task(..., **TRANSIENT_RETRY)``
TRANSIENT_RETRY = {"retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": retry_transient}
