"""Runs of many scenes: discovery, plans, the ledger, local and Dask runners."""
