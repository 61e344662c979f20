"""Services: the mapping core put to work against real databases through the adapters."""
