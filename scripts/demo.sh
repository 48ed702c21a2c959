#!/usr/bin/env bash
# The demo: a fresh virtual environment with the newest Airflow and this package, then scripts/demo.py, which
# runs example_dags/batch_fleet_demo.py through a real Airflow (scheduler, triggerer, LocalExecutor) against a
# local AWS-shaped endpoint. Arguments go to demo.py (e.g. --jobs 500).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
make_venv "$ROOT/.venvs/demo"
"$UV" pip install --quiet --python "$PY" -e ".[test,report]" psycopg2-binary asyncpg
"$PY" scripts/demo.py "$@"
