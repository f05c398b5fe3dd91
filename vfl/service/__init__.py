"""Mechanisms of the long-running party service ``vfl serve`` (DESIGN.md §11, §12).

- ``vfl.service.store``: job records in an embedded SQLite database (``JobStore``, ``JobRecord``),
  with the job lifecycle and its checked transitions, safe across processes;
- ``vfl.service.policy``: what a party accepts from whom (``policy.toml``): ``Policy.check`` gives
  accept, queue (manual approval) or refuse, naming the rule;
- ``vfl.service.logs``: a rotating service log and one log file per job under ``<workspace>/logs``;
- ``vfl.service.health``: a loopback ``GET /health`` endpoint and its probe, for systemd or a
  container orchestrator.

Nothing here runs a protocol; the service wires these to the job runner. Importing this package
imports nothing else: import the module you need.
"""
