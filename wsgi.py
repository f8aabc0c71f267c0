"""WSGI entry point: `waitress-serve wsgi:app`."""
from service import create_app

app = create_app()
