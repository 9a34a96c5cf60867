"""lorien's device updater (Bottle on waitress): check → plan → resumable download → verify → apply →
atomic deploy with backup, health check and rollback; self-healing after a crash.

Modules, in the order data flows through them: ``config`` (TOML + flags) → ``trusted`` (manifest bytes +
signature + the accepted record → verified manifest, no I/O) → ``plan`` (which version is installed, cheapest
patch chain) → ``steps`` (download the plan's files, apply patches into a candidate) → ``deploy`` (backup,
atomic replace, ``service`` stop/start and health check, rollback) → ``updater`` (the pipeline composing them,
manual rollback, healing; ``packages``: the TOPE download/update half; ``operations``: one operation and one check at a time; ``installed``:
the one rule for the installed version) with its persisted ``state`` (stages, phases, the operation record, the
heal table) and ``report`` (progress, logs, callbacks), ``metrics`` (Prometheus) → ``api`` (HTTP endpoints: Host/Origin, token, bodies).
``startup``: what a ``lorien device`` process owns (the state directory's lock, the generated API token).
Depends on ``repo`` only (trust: ``repo.trust``; downloads: ``repo.download``; patches: ``repo.engine``).
"""
