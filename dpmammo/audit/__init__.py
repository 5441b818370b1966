"""Membership-inference audits and empirical ε lower bounds (does not train the target itself:
it asks `dpmammo.train.fit` for models on known member splits). Entry point: `audit_recipe`.

Exports load on first use (dpmammo.lazy), so a study config (which holds `AuditSettings`) is read
without torch.
"""

from dpmammo.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dpmammo.audit.config": ["AuditSettings"],
    "dpmammo.audit.record": ["AUDIT_JSON", "AuditRecord", "read_audit"],
    "dpmammo.audit.run": ["audit_recipe", "audit_runs"],
    "dpmammo.audit.whitebox": ["GradientCanaries", "audit_gradient_canaries", "canary_training"],
})
