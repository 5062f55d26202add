"""Audit who a model says it is: probes, a claim detector, the grid runner, statistics, comparison, reports."""
