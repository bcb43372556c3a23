"""Consumers: integration events from RabbitMQ to handlers, exactly once per message id.

- ``registry``: ``@integration_handler`` and which handlers each consumer runs;
- ``inbox``: the inbox record that makes a handler's effects happen once;
- ``loop``: queues, decoding, retries, dead letters and the consume loop.
"""
