"""Comfy API v2 (the contract comfy-sdk speaks), under /api/v2, beside /v1; routes.py gathers its routers."""
