"""How a job is spread over processes and nodes (imported as ptune_dist.launcher)."""
