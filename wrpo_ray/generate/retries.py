"""What Ray retried for one job, read back from Ray's state API: actor restarts and task retries.

Ray Data restarts a pool's actor that died with its node (`max_restarts=-1`) and retries the tasks that
were running there or whose outputs were lost with it; the stage's summary reports how often, so a run
that survived a lost spot node says so. Restarts are read from the actor table; each attempt of a task is
its own row in the task table, so every row past attempt 0 is a retry (actor creation tasks left out, so
a restart is counted once).
"""

from __future__ import annotations

STATE_LIMIT = 10_000
"""Rows asked of the state API per listing: the most its server returns."""
ACTOR_CREATION = "ACTOR_CREATION_TASK"


def count_retries(job_id: str | None = None) -> dict[str, int]:
    """Actor restarts (all, and those after a node preemption) and task retries of `job_id`.

    `job_id` is Ray's hex job id; by default the job of this driver.
    """
    import ray
    from ray.util.state import list_actors, list_tasks

    job = job_id or ray.get_runtime_context().get_job_id()
    only_job = [("job_id", "=", job)]
    actors = list_actors(filters=only_job, detail=True, limit=STATE_LIMIT, raise_on_missing_output=False)
    tasks = list_tasks(filters=only_job, limit=STATE_LIMIT, raise_on_missing_output=False)
    return {
        "actor_restarts": sum(a.num_restarts or 0 for a in actors),
        "actor_restarts_preempted": sum(a.num_restarts_due_to_node_preemption or 0 for a in actors),
        "task_retries": sum(1 for t in tasks if t.attempt_number > 0 and t.type != ACTOR_CREATION),
    }
