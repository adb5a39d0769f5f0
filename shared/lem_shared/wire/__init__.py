"""What travels between processes: queue names, the messages on them (run requests, measurements, run
spans), the Celery app factory, and the Redis keys of heartbeats and cancel flags.
"""
