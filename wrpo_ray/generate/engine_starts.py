"""How long the pools' vLLM engines took to start, read back from Ray's state API.

An engine starts in its pool actor's constructor (a Ray worker process, importing vLLM, building the engine), so
the actor creation tasks of `VLLMGenerator` actors carry its start-up; the stage reports it beside its
throughput, and (in one wave of fixed-size pools, where every engine generates once the last is ready) its
throughput after the last engine was ready, which is what a comparison with a bare `LLM.generate` call after
`LLM(...)` needs. Restarted actors (attempt > 0) are a pool's recovery, not its
start-up, and are left out.
"""

from __future__ import annotations

from typing import Any

from wrpo_ray.generate.retries import ACTOR_CREATION, STATE_LIMIT

ENGINE_CLASS = "VLLMGenerator"


def engine_starts(since: float, job_id: str | None = None, timeout: int = 10) -> dict[str, Any]:
    """The engines of this job whose actors were created after `since` (epoch seconds): how many, each one's
    start-up in seconds, and when the last was ready, in seconds after `since`. Empty if none finished."""
    import ray
    from ray.util.state import list_tasks

    job = job_id or ray.get_runtime_context().get_job_id()
    tasks = list_tasks(filters=[("job_id", "=", job), ("type", "=", ACTOR_CREATION)], detail=True,
                       limit=STATE_LIMIT, timeout=timeout, raise_on_missing_output=False)
    return summarize(
        [(t.start_time_ms, t.end_time_ms) for t in tasks
         if ENGINE_CLASS in (t.func_or_class_name or "") and t.attempt_number == 0
         and t.start_time_ms and t.end_time_ms], since)


def summarize(spans_ms: list[tuple[int, int]], since: float) -> dict[str, Any]:
    """`engine_starts` from (start, end) milliseconds of actor creations; those begun before `since` (an earlier
    stage's) are left out."""
    mine = sorted((s, e) for s, e in spans_ms if s >= since * 1000 - 1000)
    if not mine:
        return {}
    return {"engines": len(mine), "start_s": [round((e - s) / 1000, 2) for s, e in mine],
            "all_ready_after_s": round(max(e for _, e in mine) / 1000 - since, 2)}
