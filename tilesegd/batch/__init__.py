"""Runs of many scenes: discovery, plans, the scene state machine and its ledger, local and Dask
runners."""
