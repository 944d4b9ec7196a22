"""Operational routes: /health, /ready, /ping, /version, /metrics, offline /docs and /redoc."""
