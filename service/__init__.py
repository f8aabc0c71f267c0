"""The Flask app factory; the service's modules are imported only when an app is built."""
from __future__ import annotations


def create_app(overrides: dict | None = None):
    """Build the app; `overrides` replaces settings (tests)."""
    from service.app import create_app as build

    return build(overrides)
