"""Every Python block of the README and the docs runs: each compiles, each that defines a DAG loads, and the
fleet report's blocks run end to end against moto."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import aws_connection_uri, dag_bag
from packaging.version import Version

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "howto").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DEFINES_DAG = re.compile(r"\bDAG\(|@dag\b")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    #: the import statements of the page's earlier blocks: a block may go on from them
    earlier_imports: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def source(self) -> str:
        """The block, after the imports of the blocks before it on its page."""
        return self.earlier_imports + self.code


def _imports(code: str) -> str:
    tree = compile(code, "<block>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    nodes = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.Try))]
    imports = [
        n
        for n in nodes
        if not isinstance(n, ast.Try) or all(isinstance(b, (ast.Import, ast.ImportFrom)) for b in n.body)
    ]
    return "".join(ast.get_source_segment(code, node) + "\n" for node in imports)  # type: ignore[operator]


def _blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        text, imports = page.read_text(), ""
        for match in _BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2  # the block's first line of code
            blocks.append(Block(page, line, match.group(1), imports))
            imports += _imports(match.group(1))
    return blocks


BLOCKS = _blocks()
DAG_BLOCKS = [block for block in BLOCKS if _DEFINES_DAG.search(block.code)]
REPORT_BLOCKS = [block for block in DAG_BLOCKS if "FleetReportOperator(" in block.code]


def test_the_docs_have_python_blocks_and_the_report_ones() -> None:
    assert len(BLOCKS) >= 20
    assert [block.page.name for block in REPORT_BLOCKS] == ["fleet.md", "fleet.md"]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_every_python_block_compiles(block: Block) -> None:
    compile(block.code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # an async block runs in asyncio


#: the Amazon provider that the migration page was read from (its blocks use that provider's operators)
MIGRATION_PROVIDER = Version(
    re.search(r"apache-airflow-providers-amazon (\d[\w.]*)\*\*", (ROOT / "docs" / "migration.md").read_text()).group(1)  # type: ignore[union-attr]
)


@pytest.mark.parametrize("block", DAG_BLOCKS, ids=lambda block: block.name)
def test_every_block_that_defines_a_dag_loads(block: Block, tmp_path: Path) -> None:
    installed = Version(version("apache-airflow-providers-amazon"))
    if "airflow.providers.amazon.aws.operators" in block.code and installed < MIGRATION_PROVIDER:
        pytest.skip(f"the block shows the Amazon provider {MIGRATION_PROVIDER}'s operators; {installed} is installed")
    (tmp_path / "block.py").write_text(block.source)

    bag = dag_bag(tmp_path)

    assert bag.import_errors == {}
    assert bag.dags


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("block", REPORT_BLOCKS, ids=lambda block: block.name)
def test_the_report_blocks_run_against_moto(
    block: Block, moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fleet and its report, as the page shows them, with a models file of 3 models and a bucket."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_ml_batch.testing import create_batch_queue

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_uri(moto))
    create_batch_queue("aws_default")
    S3Hook().create_bucket("reports")
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"models": [{"id": "m1"}, {"id": "m2"}, {"id": "m3"}]}))
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"docs_block_{block.line}.py"
    path.write_text(block.source)
    try:
        (dag,) = dag_bag(path).dags.values()
        for task in dag.tasks:  # dag.test() pushes no XCom of a task ended from the triggerer: end on a worker
            if hasattr(task, "partial_kwargs"):
                task.partial_kwargs["end_from_trigger"] = False
        dag_run = dag.test(run_conf={"models_file": str(models_file)})
    finally:
        path.unlink()

    assert dag_run.state == "success"
    prefix = f"forecast/{dag_run.logical_date:%Y-%m-%d}"
    rows = list(csv.DictReader(io.StringIO(S3Hook().read_key(f"{prefix}/report.csv", "reports"))))
    assert [(row["model_id"], row["status"]) for row in rows] == [(m, "SUCCEEDED") for m in ("m1", "m2", "m3")]
    assert S3Hook().check_for_key(f"{prefix}/report.html", "reports")
