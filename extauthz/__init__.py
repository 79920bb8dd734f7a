"""extauthz: an Envoy external-authorization (ext_authz v3) gRPC service."""

__version__ = "0.1.0"
