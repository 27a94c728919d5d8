"""Every /api/v2 route, as one router for create_app."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.v2 import assets, events, jobs

router = APIRouter()
for module in (jobs, assets, events):
    router.include_router(module.router)
