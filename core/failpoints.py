"""Named moments where a fault test can hold a run still, so that ``kill -9`` lands exactly there.

Off unless ``SHADEFLOW_FAILPOINT`` names the point. Then the first process to reach it creates the
file ``SHADEFLOW_FAILPOINT_FILE`` (exclusively: one holder across every process of the run),
writes its process id into it and sleeps ``SHADEFLOW_FAILPOINT_WAIT`` seconds (default 120) — long
enough for the test to kill it. Later arrivals pass through, so a rescheduled task or a rerun is not
held again. Publishing an output, for example, cannot otherwise be interrupted at a chosen step: it
takes milliseconds.
"""

from __future__ import annotations

import os
import time

#: the points shadeflow passes, in the order a run reaches them
POINTS = (
    "load-stack",  # a worker reads one slide's mean-image stack (model build)
    "publish-marked",  # an output's writing marker is in place, nothing moved yet
    "publish-moved",  # the staged files are in the output folder, no manifest yet
    "publish-manifest",  # the manifest is written; files beside the folder (a model's .bin) not yet
)


def reached(point: str) -> None:
    """Hold here if a fault test asked for ``point`` and no other process holds it already."""
    if os.environ.get("SHADEFLOW_FAILPOINT") != point:
        return
    try:
        handle = os.open(os.environ["SHADEFLOW_FAILPOINT_FILE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(handle, str(os.getpid()).encode())
    os.close(handle)
    time.sleep(float(os.environ.get("SHADEFLOW_FAILPOINT_WAIT", "120")))
