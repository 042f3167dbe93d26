"""Outbound messages to the booking product: signed (Standard Webhooks), pushed by workers of
their own queue with a back-off, never from a web request or inside a transaction. The log
itself is written by the committing transaction (db/messages.py)."""
