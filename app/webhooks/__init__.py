"""Webhook delivery: the retry schedule and the supervised sender of the outbox (app/db/webhooks.py)."""
