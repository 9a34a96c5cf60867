"""Helpers the tests share: real device processes (``device_harness``), scripted and fault-injecting HTTP
servers (``http_thread``, ``faulty_server``), model files written with the format libraries (``model_files``).

The fault-injecting TCP proxy lives in ``bench/tcp_proxy.py``: the fleet benchmark uses it too, and ``bench/``
imports nothing from ``tests/``.
"""
