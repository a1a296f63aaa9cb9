"""The `corral` command line: talks to the server only through `corral.client`."""
