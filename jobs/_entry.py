import sys

from wrpo_ray.cli import main


def submit_entry(stage: str) -> None:
    """Run one `wrpo-ray` subcommand with this process's arguments, as the driver of a Ray job."""
    sys.exit(main([stage, *sys.argv[1:]]))
