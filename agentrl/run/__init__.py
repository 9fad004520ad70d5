"""What a run does and leaves in runs/<name>/: checkpoints, metrics, alarms, preflight checks, fault accounting, the report and the trajectory viewer."""
