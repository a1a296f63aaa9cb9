"""Authentication and authorization: API keys, JWT bearer tokens, scopes.

Owns who a credential belongs to and what it may do. Does not own HTTP: the server's security
middleware (`corral.server.ops.security`) extracts credentials and writes errors. Imports only
config, errors and names.
"""

from corral.auth.authenticator import Authenticator, Principal
from corral.auth.keys import KeyRecord, KeyStore
from corral.auth.scopes import SCOPES, parse_scopes, required_scope

__all__ = ["SCOPES", "Authenticator", "KeyRecord", "KeyStore", "Principal", "parse_scopes", "required_scope"]
