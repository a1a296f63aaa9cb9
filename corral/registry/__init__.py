"""Registry transport: pulling and pushing models over the OCI distribution protocol (spec §7).

A layer between the store and the server: imports store, names, errors, schemas and config;
never the server, scheduler, engines or CLI.
"""
