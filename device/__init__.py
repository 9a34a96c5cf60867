"""lorien's device updater (Bottle on waitress): check → plan → resumable download → verify → apply →
atomic deploy with backup, health check and rollback; self-healing after a crash.

Modules, in the order data flows through them: ``config`` (TOML + flags) → ``trusted`` (manifest bytes +
signature + the accepted record → verified manifest, no I/O) → ``plan`` (which version is installed, cheapest
patch chain) → ``steps`` (download the plan's files, apply patches into a candidate) → ``deploy`` (backup,
atomic replace, ``service`` stop/start and health check, rollback) → ``updater`` (the pipeline composing them,
TOPE packages, manual rollback, healing) with its persisted ``state`` (stages, phases, the operation record,
the heal table) and ``report`` (progress, logs, callbacks) → ``api`` (HTTP endpoints).
Depends on ``repo`` only (trust: ``repo.trust``; downloads: ``repo.download``; patches: ``repo.engine``).
"""
