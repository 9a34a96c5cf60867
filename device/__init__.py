"""lorien's device updater (Bottle on waitress): check → plan → resumable download → verify → apply →
atomic deploy with backup, health check and rollback.

Not built yet: this package is the home of issue #4 ("Device updater"). It will depend on ``repo`` only.
Until then ``lorien demo`` performs the device side of the flow itself with ``repo`` primitives.
"""
