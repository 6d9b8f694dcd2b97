"""`ray job submit --working-dir . -- python -m jobs.eval --config FILE`: the `eval` stage as a Ray job."""

from jobs._entry import submit_entry

if __name__ == "__main__":
    submit_entry("eval")
