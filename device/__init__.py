"""lorien's device updater (Bottle on waitress): check → plan → resumable download → verify → apply →
atomic deploy with backup, health check and rollback; self-healing after a crash.

Modules, in the order data flows through them: ``config`` (TOML + flags) → ``plan`` (which version is
installed, cheapest patch chain) → ``updater`` (the pipeline and its persisted ``state``) → ``service``
(stop/start the model's consumer, health check) → ``report`` (logs, callbacks) → ``api`` (HTTP endpoints).
Depends on ``repo`` only (downloads: ``repo.download``; patches: ``repo.engine``).
"""
