"""What every room stands on: user errors, stable names for config targets, the entry points' error handling, a job's set-up and its tracking."""
