"""Prefect 3 orchestration of the DVC pipeline.

* :mod:`flows.pipeline`: the ``msjoe-retrain`` flow (one task per ``dvc.yaml`` stage running
  ``dvc repro <stage>``, store records, artifacts, promotion gate). Importing it imports Prefect.
* :mod:`flows.dvc_stages`: stage list in DAG order and running one stage (no Prefect).
* :mod:`flows.workspace`: the one-run-per-workspace lock.
* :mod:`flows.promotion`: the pure promotion gate (``should_promote``).
* :mod:`flows.metrics_report`: metrics JSON to markdown / table rows for artifacts.
* :mod:`flows.store_records`: what a run writes to and reads from the metadata store.

The local Prefect server, work pool, deployment registration and worker live next to the
deployment file, in ``infra/prefect/local_server.py`` (``make orchestrate`` runs
``infra/prefect/serve.py``).

This package module stays light: it imports nothing, so ``flows.promotion`` and friends can be
used without loading Prefect.
"""
