"""What the package knows about AWS jobs, without I/O: requests to build, answers to read, messages to write.

One module per service (:mod:`~airflow_ml_batch.jobs.batch`, :mod:`~airflow_ml_batch.jobs.ecs`) and
:mod:`~airflow_ml_batch.jobs.common` for what both share; :mod:`~airflow_ml_batch.jobs.errors` tells which AWS
errors pass by themselves. Hooks, operators and triggers import from here; nothing here calls AWS or Airflow.
"""
