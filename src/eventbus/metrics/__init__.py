"""Prometheus metrics and health endpoints (DESIGN 9); off unless enabled.

Only `config` and `recorder` are imported by the core: they need nothing beyond the standard
library. The modules that import ``prometheus_client`` (`collector`, `service`, `merge`) are
imported once metrics are enabled, so a bus without them never loads it.
"""
