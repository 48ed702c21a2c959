#!/usr/bin/env bash
# The test suite: lint, types, the docs build and every test on the newest Airflow, then the suite again under the
# MWAA pin files of each Airflow version MWAA runs. Usage: scripts/test.sh [LEG ...]
# LEG is "newest", "wheel" (the built sdist and wheel, checked, and the wheel installed in a fresh environment
# running the README's first DAG) or an MWAA version (2.10.3 2.11.2 3.0.6 3.2.1 3.3.1); default: all of them.
# The newest leg (with its fault scenarios through a real Airflow) runs alone; then the others, PARALLEL at a
# time (default 2: a leg keeps about a quarter of the 2 cores busy, its tests mostly wait on their endpoints).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"

# The pin files of every MWAA image, kept in the repository (constraints/mwaa/README.md says where from).
MWAA_DIR="${MWAA_DIR:-$ROOT/constraints/mwaa}"
# The newest leg takes the newest Airflow release, and asserts it is at least this one.
NEWEST=">=3.3.2"
LEGS=("$@")
[ ${#LEGS[@]} -gt 0 ] || LEGS=(newest wheel 2.10.3 2.11.2 3.0.6 3.2.1 3.3.1)
SUMMARY=()
PARALLEL="${PARALLEL:-2}"

run_wheel_leg() {
  local start=$SECONDS dist="$ROOT/.venvs/dist"
  echo "=== leg wheel: building"
  rm -rf "$dist"
  "$UV" build --quiet --out-dir "$dist" "$ROOT"
  make_venv "$ROOT/.venvs/wheel-check"
  "$UV" pip install --quiet --python "$PY" twine
  "$PY" -m twine check --strict "$dist"/*
  "$PY" "$ROOT/scripts/check_wheel.py" "$dist"/*.whl
  echo "=== leg wheel: installing the wheel"
  make_venv "$ROOT/.venvs/test-wheel"
  # the wheel alone, and what the tests of a deployment need (no source tree, no editable install)
  "$UV" pip install --quiet --python "$PY" "$dist"/*.whl "apache-airflow$NEWEST" "moto[server]>=5.0.11" \
    "apache-airflow-providers-openlineage>=1.13.0" "pytest>=8.2" "pytest-asyncio>=0.24" "pytest-timeout>=2.3"
  # run from elsewhere, so that Python imports the installed wheel, not the source tree
  (cd "$(mktemp -d)" && EXPECTED_AIRFLOW_VERSION="$NEWEST" EXPECTED_INSTALL=wheel AIRFLOW_HOME="$(mktemp -d)" \
    "$PY" -m pytest -p no:cacheprovider -q -c "$ROOT/pyproject.toml" --rootdir "$ROOT" \
    "$ROOT/tests/test_deployments.py" -k "default_configuration or installed")
  SUMMARY+=("leg wheel: $(basename "$dist"/*.whl) passed in $((SECONDS - start))s")
  echo "${SUMMARY[-1]}"
}

run_leg() {
  local leg="$1" start=$SECONDS
  if [ "$leg" = wheel ]; then run_wheel_leg; return; fi
  echo "=== leg $leg: installing"
  make_venv "$ROOT/.venvs/test-$leg"
  if [ "$leg" = newest ]; then
    # report: matplotlib for the chart tests (MWAA 3.3.1 pins a numpy that needs Python 3.12: the MWAA
    # legs test the report without a chart); aiohttp: the Batch-shaped endpoint of the chaos scenarios
    # (tests/chaos, newest leg only); docs: Sphinx for the documentation site
    "$UV" pip install --quiet --python "$PY" -e ".[test,lint,report,docs]" "apache-airflow$NEWEST" aiohttp
  else
    [ -f "$MWAA_DIR/$leg/airflow_constraints.txt" ] || { echo "no MWAA pin file for $leg in $MWAA_DIR"; exit 2; }
    # As MWAA installs a requirements.txt: Airflow's constraints plus MWAA's essential pins.
    "$UV" pip install --quiet --python "$PY" -e ".[test]" "apache-airflow==$leg" \
      -c "$MWAA_DIR/$leg/airflow_constraints.txt" -c "$MWAA_DIR/$leg/mwaa_essential_constraints.txt"
  fi
  local airflow_version markers=(-m "not chaos")
  airflow_version="$("$PY" -c 'import airflow; print(airflow.__version__)' 2>/dev/null | tail -n 1)"
  echo "=== leg $leg: Airflow $airflow_version, $("$PY" -c 'import sys; print("Python", sys.version.split()[0])')"
  if [ "$leg" = newest ]; then
    "$PY" -m ruff check .
    "$PY" -m ruff format --check .
    "$PY" -m mypy
    # The documentation site, from scratch: every warning is an error, a broken reference included (-n).
    AIRFLOW_HOME="$(mktemp -d)" "$PY" -m sphinx -E -W --keep-going -n -q -b html docs "$(mktemp -d)"
    export EXPECTED_AIRFLOW_VERSION="$NEWEST"
    markers=()  # the chaos scenarios (real Airflow processes, a few minutes) run on the newest Airflow only
  else
    export EXPECTED_AIRFLOW_VERSION="$leg"
  fi
  AIRFLOW_HOME="$(mktemp -d)" "$PY" -m pytest -p no:cacheprovider -q --durations=15 "${markers[@]}"
  SUMMARY+=("leg $leg: Airflow $airflow_version passed in $((SECONDS - start))s")
  echo "${SUMMARY[-1]}"
}

# Each leg's output goes to its own file, printed whole when the leg ends; the summary names every leg.
LOGS="$(mktemp -d)"
run_logged() {
  local leg="$1"
  # not "|| code=$?": bash would then ignore set -e inside the leg, and a failing step would not end it
  set +e
  (set -e; run_leg "$leg") > "$LOGS/$leg.log" 2>&1
  echo "$?" > "$LOGS/$leg.code"
  set -e
}
finish_leg() {
  local leg="$1"
  cat "$LOGS/$leg.log"
  if [ "$(cat "$LOGS/$leg.code")" = 0 ]; then
    SUMMARY+=("$(grep -E "^leg $leg: .* passed in [0-9]+s$" "$LOGS/$leg.log" | tail -n 1)")
  else
    SUMMARY+=("leg $leg: FAILED (exit $(cat "$LOGS/$leg.code"), after ${SECONDS}s of the run)")
  fi
}

QUEUE=()
for leg in "${LEGS[@]}"; do
  if [ "$leg" = newest ]; then
    run_logged newest
    finish_leg newest
  else
    QUEUE+=("$leg")
  fi
done
RUNNING=()
for leg in "${QUEUE[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do sleep 5; done
  echo "=== leg $leg: started after ${SECONDS}s"
  run_logged "$leg" &
  RUNNING+=("$leg")
done
wait
for leg in "${RUNNING[@]}"; do finish_leg "$leg"; done
printf '%s\n' "${SUMMARY[@]}"
if printf '%s\n' "${SUMMARY[@]}" | grep -q FAILED; then
  echo "some legs failed after ${SECONDS}s"
  exit 1
fi
echo "all ${#LEGS[@]} legs passed in ${SECONDS}s"
