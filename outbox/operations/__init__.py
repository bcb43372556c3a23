"""Operations: what the admin, the commands and the Celery tasks run for operators.

- ``stats``: the health summary and stuck rows;
- ``metrics``: Prometheus counters, histograms and backlog gauges;
- ``actions``: retry now, mark failed, replay, purge.
"""
