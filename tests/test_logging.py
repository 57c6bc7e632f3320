"""Every log line written inside an activity carries its task id."""

from __future__ import annotations

import dataclasses
import io
import json

from temporalio import activity
from temporalio.testing import ActivityEnvironment

from taskomatic.logs import configure_logging, get_logger


def test_activity_lines_carry_task_id_and_outside_lines_do_not() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)

    @activity.defn(name="define_domain")
    def probe() -> None:
        get_logger(vm="web1", host="h1").info("inside")

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id="vm-create-web1-123")
    get_logger().info("outside")
    env.run(probe)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert "task_id" not in outside
    assert (inside["task_id"], inside["vm"], inside["host"]) == ("vm-create-web1-123", "web1",
                                                                "h1")
    configure_logging("console", "info")
