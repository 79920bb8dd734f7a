"""A development environment: dev PKI, an echo upstream, extauthz and a real Envoy as processes.

Used by ``extauthz demo``, the end-to-end tests (``tests/harness``) and the benchmarks.
"""
