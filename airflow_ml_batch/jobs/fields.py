"""Operator parameters that are fields of the AWS request starting a job, declared once, in the signature.

An operator marks such a parameter with its type: ``job_queue: Annotated[str, RequestField("jobQueue")]``.
From that one declaration come the operator's ``template_fields`` and ``template_fields_renderers``, the
attributes it keeps, and the request: a field with a ``key`` is sent under that key as it is; a field
without one (a shorthand such as ``command``) is folded in by the service's request builder. The
signature stays an ordinary typed signature for IDEs and mypy (``Annotated`` is transparent to them; the
docs show it without the metadata).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class RequestField:
    """How an operator parameter enters the request that starts its job.

    :param key: the request key that takes the value as it is; ``None``: the request builder folds the
        value in (a shorthand, a unit conversion, a merge with other fields).
    :param render: the UI's renderer of the templated value (``template_fields_renderers``), e.g. ``"json"``.
    :param templated: whether Jinja renders the value (it is in ``template_fields``).
    """

    key: str | None = None
    render: str | None = None
    templated: bool = True


def request_fields(function: Callable[..., Any]) -> dict[str, RequestField]:
    """The parameters of ``function`` (an ``__init__``) marked ``Annotated[..., RequestField(...)]``, in order."""
    hints = typing.get_type_hints(function, include_extras=True)
    fields = {}
    for name in inspect.signature(function).parameters:
        hint = hints.get(name)
        if hint is not None and typing.get_origin(hint) is Annotated:
            marks = [mark for mark in hint.__metadata__ if isinstance(mark, RequestField)]
            if marks:
                fields[name] = marks[0]
    return fields


def direct_request(fields: Mapping[str, RequestField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The request keys that take a value as it is: each keyed field whose value is not ``None``."""
    return {field.key: values[name] for name, field in fields.items() if field.key and values.get(name) is not None}


def passed_through(parameter: str, extra: Mapping[str, Any] | None, reserved: Mapping[str, str]) -> dict[str, Any]:
    """``extra`` (``submit_job_kwargs``, ``run_task_kwargs``), once none of its keys is one of ``reserved``.

    ``reserved`` maps the request keys that identify the job (its name, its identity tags, its token) to
    what the user should do instead; such a key would break re-attaching, the lookup after a lost answer or
    the stop of a cleared task.

    :raises ValueError: naming the parameter, the key and what to use instead.
    """
    for key in extra or {}:
        if key in reserved:
            raise ValueError(f"{parameter} may not set {key!r}: {reserved[key]}")
    return dict(extra or {})
