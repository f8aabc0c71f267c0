"""The console: the blueprint of service/web/console/views.py with every page module's routes on it
(each module imports views for `bp`; views imports none of them)."""
from __future__ import annotations

from service.web.console import audit_log, deployments, key_page, logs, operator, user
from service.web.console.views import bp

PAGES = (user, operator, logs, key_page, deployments, audit_log)  # their routes are on bp

__all__ = ["bp", "PAGES"]
