"""The embedded default: tiny heterogeneous models and a synthetic task with checkable answers."""
