"""Deferrable Airflow operators for fleets of AWS Batch and ECS/Fargate model jobs."""

from __future__ import annotations

__version__ = "0.4.0"

__all__ = ["__version__"]
