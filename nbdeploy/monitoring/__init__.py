"""Monitoring of running deployments: a Prometheus nbdeploy starts and feeds, and Grafana files.

``targets.sync()`` keeps Prometheus' service-discovery files in step with the store;
``prometheus`` starts, stops and reports the server; ``grafana`` writes a ready dashboard and
provisioning files for a Grafana the user runs. Nothing here imports Jupyter.
"""
