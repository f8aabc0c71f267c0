"""Extension objects, created with no app; `create_app` binds them."""
from __future__ import annotations

from flask_cors import CORS
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter

from service.limits.rates import limit_key

jwt = JWTManager()
cors = CORS()
limiter = Limiter(key_func=limit_key, headers_enabled=True)
