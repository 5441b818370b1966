"""Membership-inference audits and empirical ε lower bounds (does not train the target itself:
it asks `dpmammo.train.fit` for models on known member splits). Entry point: `audit_recipe`."""

from dpmammo.audit.config import AuditSettings
from dpmammo.audit.record import AUDIT_JSON, AuditRecord, read_audit
from dpmammo.audit.run import audit_recipe, audit_runs

__all__ = ["AuditSettings", "AUDIT_JSON", "AuditRecord", "read_audit", "audit_recipe", "audit_runs"]
