"""Policy: load Istio security resources, compile them, evaluate a request against them."""

from extauthz.policy.engine import Engine, Verdict, compile_policies
from extauthz.policy.loader import PolicyError, load_directory, load_text
from extauthz.policy.model import PolicySet

__all__ = [
    "Engine",
    "PolicyError",
    "PolicySet",
    "Verdict",
    "compile_policies",
    "load_directory",
    "load_text",
]
