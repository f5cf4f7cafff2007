"""``bench audit``: one poison (or defense) against a frozen, versioned suite of defenses (poisons),
with the worst case, every cell's verdict, budget, cost and rank, as a terminal summary, ``audit.md``
and ``audit.json``.

suites (the suite files and the set cover), quick (the quick suite computed from the records), plan
(the cells, validated, with what is reused and what the rest costs), report (the answer as data, from
the report layer's rules), render (``audit.md``), command (the click command; ``benchmark/ui/audit.py``
prints). The audit runs through the sweep machinery and leaves ordinary records, so ``bench
leaderboard`` shows the audited method as one more row or column.
"""

from benchmark.audit.plan import AuditPlan, AuditRequest, build_plan
from benchmark.audit.report import SCHEMA, build_audit
from benchmark.audit.suites import Entry, Suite, load_suite

__all__ = ["SCHEMA", "AuditPlan", "AuditRequest", "Entry", "Suite", "build_audit", "build_plan", "load_suite"]
