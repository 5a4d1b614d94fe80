"""Live checks against the running stack (place reserved).

The static checks in this directory need no running service. The live ones
belong here: start the four services as processes (as `lodestar run` does),
run a real Prometheus with deploy/prometheus/prometheus.yml (its targets
rewritten to the ports the processes got), query its HTTP API until every
service's metric families appear under job="lodestar", then evaluate every
dashboard and rule expression (tests.ops._deploy_check.dc.dashboard_expressions)
against it; and send one gateway request with an in-memory span exporter in
each process to check that it yields one connected trace across processes.
"""
