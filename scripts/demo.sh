#!/usr/bin/env bash
# The demo: a fresh virtual environment with the newest Airflow and this package, then scripts/demo.py, which
# runs example_dags/monthly_demand_forecast.py through a real Airflow (api-server, scheduler with LocalExecutor,
# dag-processor, triggerer) against a local AWS-shaped endpoint. Arguments go to demo.py (e.g. --models 500).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
make_venv "$ROOT/.venvs/demo"
# Bytecode compiled at install, as pip does: Airflow runs its task processes with -B, so without it every
# task run would compile the Airflow modules it imports from source.
"$UV" pip install --quiet --compile-bytecode --python "$PY" -e ".[test,report]" psycopg2-binary asyncpg
"$PY" scripts/demo.py "$@"
