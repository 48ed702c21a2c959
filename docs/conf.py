"""Sphinx configuration of the airflow-ml-batch documentation.

Built with ``python -m sphinx -W --keep-going -n -b html docs <output dir>`` (the newest leg of
``scripts/test.sh`` does it): every warning fails the build, a broken reference included. No
intersphinx: the build runs without network access, so references into Airflow, botocore or the
standard library are left as plain text and the few that autodoc creates from signatures are listed in
``nitpick_ignore`` below.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the working tree, not an installed copy
# Importing the package imports Airflow: keep it from writing an airflow.cfg or a database anywhere real.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-docs-")

from airflow_ml_batch import __version__  # noqa: E402

project = "airflow-ml-batch"
author = "airflow-ml-batch contributors"
copyright = "airflow-ml-batch contributors"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: "#logs"-style links to headings within and across pages.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: the docstrings use reST field lists (:param x:); signatures keep their types.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # an override without a docstring of its own is not listed again

# Every reference must resolve, except these, which name classes of Airflow, botocore, aiobotocore,
# asgiref and the boto3 type stubs: without intersphinx (no network at build time) they have no target.
# They come from signatures and base classes, not from our text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(airflow|botocore|aiobotocore|asgiref|mypy_boto3_batch|mypy_boto3_ecs)(\..*)?"),
    (r"py:class", r"(BaseOperator|BaseTrigger|BaseAwsLink|CloudWatchEventsLink|AwsGenericHook|Context)"),
    # what differs per Airflow version (a private module, not documented): e.g. TaskInstanceNow, a named tuple
    (r"py:class", r"airflow_ml_batch\._compat\..*"),
    (r"py:class", r"(Config|Credentials|AioSession|AioBaseClient|BatchClient|ECSClient|TriggerEvent)"),
    # The standard library's types in signatures (built-ins and typing resolve without a target).
    (
        r"py:class",
        r"(abc|datetime|pathlib|collections(\.abc)?|asyncio|contextlib|weakref|random|subprocess|argparse|threading)\..*",
    ),
    # type variables of generic signatures (autodoc documents no TypeVar)
    (r"py:class", r"airflow_ml_batch\..*\.T"),
    # the endpoint's web server
    (r"py:.*", r"aiohttp(\..*)?"),
]

html_theme = "alabaster"
html_title = f"airflow-ml-batch {release}"
html_static_path: list[str] = []


_ANNOTATED = re.compile(r"(~?(?:typing|typing_extensions|types)\.)?Annotated\[")


def _without_annotated(text: str) -> str:
    """``Annotated[T, RequestField(...)]`` as ``T``: the metadata is for the operator, not for readers."""
    while match := _ANNOTATED.search(text):
        depth, comma = 1, None
        for index in range(match.end(), len(text)):
            char = text[index]
            if char in "[(":
                depth += 1
            elif char in "])":
                depth -= 1
                if depth == 0:
                    break
            elif char == "," and depth == 1 and comma is None:
                comma = index
        else:
            return text  # unbalanced: leave it to Sphinx
        text = text[: match.start()] + text[match.end() : comma if comma is not None else index] + text[index + 1 :]
    return text


def _readable_signature(app, what, name, obj, options, signature, return_annotation):
    """Signatures as Python: no ``Annotated`` metadata, and ``...`` for a dataclass field's ``<factory>``."""
    if not signature:
        return None
    return _without_annotated(signature).replace("<factory>", "..."), return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _readable_signature)
