"""WSGI entry point for gunicorn: `gunicorn listener.wsgi:app`."""

from listener.app import create_app

app = create_app()
