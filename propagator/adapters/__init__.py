"""Adapters: everything that talks to PostgreSQL, the network or the operating system."""
