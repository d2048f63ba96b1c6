"""Shared runtime of the services: settings, contracts, broker and cache adapters, topology."""
