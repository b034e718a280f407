"""Jobs: containers that run a script once per version of their inputs (write a config into a
volume, wait for a replica to be back in rotation), and whose failure fails `pulumi up`.

The Docker provider cannot do that with a container that exits: with `attach` it waits for the
exit and ignores the status, so a failed job counts as created. So a job does not exit when its
script succeeds: it marks success in a file and stays as the record of that success, and
`pulumi up` waits (`wait`) for a health check that finds the mark. A script that fails exits
without the mark, the wait ends in an error at the job's time limit, and `pulumi up` fails. The
engine then records the job as failed to initialise, and since every container is replaced on any
change, including that one (`replace_on_changes`), the next `pulumi up` runs the job again instead
of accepting the failed one. A new version of the inputs starts a new job before the old one is
removed (jobs are autonamed).
"""
from __future__ import annotations

from fleet.docker.container_spec import ContainerSpec, HealthCheck

DONE_MARK = "/tmp/vllm-fleet-job-done"


def job_script(script: str) -> str:
    """`script` run by `sh -eu`; on success, the mark and an idle wait that a stop ends at once."""
    return (f"( set -eu; {script} )\n"
            f"status=$?; if [ $status -ne 0 ]; then echo \"vllm-fleet: job failed (exit $status)\" >&2; exit $status; fi\n"
            f"touch {DONE_MARK}; echo 'vllm-fleet: job done'\n"
            "trap 'exit 0' TERM INT\n"
            "while :; do sleep 3600 & wait $!; done")


def job(*, name: str, host: str, role: str, image: str, script: str, timeout_s: int, **fields) -> ContainerSpec:
    """A job container: `script` is POSIX sh, run in `image` (which needs sh, touch and sleep)."""
    return ContainerSpec(
        name=name, host=host, role=role, image=image, entrypoint=["/bin/sh", "-c"], command=[job_script(script)],
        # The shell's own `test`: no binary of the image needed beyond sh.
        healthcheck=HealthCheck(["CMD-SHELL", f"test -f {DONE_MARK}"], interval_s=30, timeout_s=5, retries=3,
                                start_period_s=timeout_s, start_interval_s=1),
        restart="no", start_timeout_s=timeout_s, stop_grace_s=0, one_shot=True, **fields)
