"""Tooling beside the daemon: evaluation, calibration, benchmarks, data builders. Never imported by the daemon."""
