"""abgate's HTTP gateway: routes, assignment, encoder runtime, search and event logging."""
