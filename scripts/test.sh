#!/usr/bin/env bash
# The test suite: lint, types, the docs build and every test on the newest Airflow, then the suite again under the
# MWAA pin files of each Airflow version MWAA runs. Usage: scripts/test.sh [LEG ...]
# LEG is one of:
#   newest   lint, types, the docs site and the suite on the newest Airflow release
#   chaos    the fault scenarios through real Airflow processes (tests/chaos, pytest -m chaos), newest Airflow
#   celery   Airflow under the CeleryExecutor as MWAA runs it (tests/test_celery.py, pytest -m celery): MWAA
#            $CELERY_MWAA's pins with the Celery provider, Redis as broker, Postgres as metadata database and
#            result backend (redis-server and Postgres's server from apt-get when missing)
#   wheel    the built sdist and wheel, checked, and the wheel installed in a fresh environment running the
#            README's first DAG
#   2.10.3 2.11.2 3.0.6 3.2.1 3.3.1   the suite under that MWAA version's pin files
# Default: all of them. The legs run PARALLEL at a time (default 3: a leg keeps about a quarter of the 2 cores
# busy, its tests mostly wait on their endpoints), the longest first (LEG_SECONDS).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"

# The pin files of every MWAA image, kept in the repository (constraints/mwaa/README.md says where from).
MWAA_DIR="${MWAA_DIR:-$ROOT/constraints/mwaa}"
# The newest and chaos legs take the newest Airflow release, and assert it is at least this one.
NEWEST=">=3.3.2"
# The MWAA version whose pins the celery leg installs: the newest MWAA runs.
CELERY_MWAA="${CELERY_MWAA:-3.3.1}"
LEGS=("$@")
[ ${#LEGS[@]} -gt 0 ] || LEGS=(newest chaos celery wheel 2.10.3 2.11.2 3.0.6 3.2.1 3.3.1)
SUMMARY=()
PARALLEL="${PARALLEL:-3}"
# The order the legs start in: about how many seconds each took in a full run, three legs at a time on 2 busy
# cores (2026-12-06, night).
declare -A LEG_SECONDS=(
  [chaos]=1070 [3.2.1]=1020 [3.0.6]=990 [newest]=870 [3.3.1]=800 [2.10.3]=630 [2.11.2]=570 [celery]=200 [wheel]=70
)

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

# The Redis server and Postgres's server binaries the celery leg runs, from Debian's repositories when missing.
install_servers() {
  local missing=() sudo=()
  command -v redis-server > /dev/null || missing+=(redis-server)
  command -v initdb > /dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "=== leg celery: apt-get install ${missing[*]}"
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  # the package lists only when the packages are not found without them (a fresh machine may have none)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    > /dev/null 2>&1 || {
    "${sudo[@]}" apt-get update -qq > /dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      > /dev/null
  }
}

run_leg() {
  local leg="$1" start=$SECONDS
  if [ "$leg" = wheel ]; then run_wheel_leg; return; fi
  local pins="$leg" markers=(-m "not chaos and not celery")
  case "$leg" in
    newest) ;;
    chaos) markers=(-m chaos) ;;
    celery) pins="$CELERY_MWAA" markers=(-m celery) ;;
  esac
  [ "$leg" = celery ] && install_servers
  echo "=== leg $leg: installing"
  make_venv "$ROOT/.venvs/test-$leg"
  if [ "$leg" = newest ]; then
    # report: matplotlib for the chart tests (MWAA 3.3.1 pins a numpy that needs Python 3.12: the MWAA
    # legs test the report without a chart); docs: Sphinx for the documentation site; aiohttp: the endpoint
    "$UV" pip install --quiet --python "$PY" -e ".[test,lint,report,docs]" "apache-airflow$NEWEST" aiohttp
  elif [ "$leg" = chaos ]; then
    # aiohttp: the AWS-shaped endpoint of the scenarios (the scenarios use SQLite: no Postgres)
    "$UV" pip install --quiet --python "$PY" -e ".[test]" "apache-airflow$NEWEST" aiohttp
  else
    [ -f "$MWAA_DIR/$pins/airflow_constraints.txt" ] || { echo "no MWAA pin file for $pins in $MWAA_DIR"; exit 2; }
    local extra=()
    # the CeleryExecutor as MWAA runs it: the Celery provider, Redis's client, Postgres's drivers (sync and async)
    [ "$leg" = celery ] && extra=(apache-airflow-providers-celery redis psycopg2-binary asyncpg aiohttp)
    # As MWAA installs a requirements.txt: Airflow's constraints plus MWAA's essential pins.
    "$UV" pip install --quiet --python "$PY" -e ".[test]" "apache-airflow==$pins" "${extra[@]}" \
      -c "$MWAA_DIR/$pins/airflow_constraints.txt" -c "$MWAA_DIR/$pins/mwaa_essential_constraints.txt"
  fi
  local airflow_version
  airflow_version="$("$PY" -c 'import airflow; print(airflow.__version__)' 2>/dev/null | tail -n 1)"
  echo "=== leg $leg: Airflow $airflow_version, $("$PY" -c 'import sys; print("Python", sys.version.split()[0])')"
  if [ "$leg" = newest ]; then
    "$PY" -m ruff check .
    "$PY" -m ruff format --check .
    "$PY" -m mypy
    # The documentation site, from scratch: every warning is an error, a broken reference included (-n).
    AIRFLOW_HOME="$(mktemp -d)" "$PY" -m sphinx -E -W --keep-going -n -q -b html docs "$(mktemp -d)"
  fi
  case "$leg" in
    newest | chaos) export EXPECTED_AIRFLOW_VERSION="$NEWEST" ;;
    celery) export EXPECTED_AIRFLOW_VERSION="$CELERY_MWAA" EXPECTED_CELERY=1 ;;  # missing Redis fails, not skips
    *) export EXPECTED_AIRFLOW_VERSION="$leg" ;;
  esac
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
  local start=$SECONDS
  (set -e; run_leg "$leg") > "$LOGS/$leg.log" 2>&1
  echo "$?" > "$LOGS/$leg.code"
  set -e
  echo "=== leg $leg: ended after ${SECONDS}s, in $((SECONDS - start))s"
  echo "$start $SECONDS" > "$LOGS/$leg.seconds"
}
finish_leg() {
  local leg="$1"
  cat "$LOGS/$leg.log"
  if [ "$(cat "$LOGS/$leg.code")" = 0 ]; then
    SUMMARY+=("$(grep -E "^leg $leg: .* passed in [0-9]+s$" "$LOGS/$leg.log" | tail -n 1)")
  else
    local times
    read -ra times < "$LOGS/$leg.seconds"
    SUMMARY+=("leg $leg: FAILED (exit $(cat "$LOGS/$leg.code")) in $((times[1] - times[0]))s, from ${times[0]}s to ${times[1]}s of the run")
  fi
}

# The longest legs first, so that the short ones fill in at the end; legs not in LEG_SECONDS last.
mapfile -t QUEUE < <(for leg in "${LEGS[@]}"; do echo "${LEG_SECONDS[$leg]:-0} $leg"; done | sort -s -k1,1nr | cut -d' ' -f2)
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
