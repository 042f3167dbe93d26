"""The web service and the `mismatch` command: Stripe webhook intake, the JSON API, the
support pages, health and metrics (listener/app.py); the CLI (listener/cli.py)."""
