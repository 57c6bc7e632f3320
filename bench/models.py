"""Payloads of the baseline workflow: small pydantic models, like taskomatic's own."""

from __future__ import annotations

from pydantic import BaseModel


class BaselineRequest(BaseModel):
    task_id: str
    activities: int


class BaselineResult(BaseModel):
    task_id: str
    activities: int


class NoopInput(BaseModel):
    task_id: str
    step: int


class NoopResult(BaseModel):
    step: int
