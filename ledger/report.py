"""A plain terminal summary of a ledger: per module, calls, hosts, bytes, errors, self-egress."""
from __future__ import annotations

from dataclasses import dataclass, field

from interceptor.event import AUDIT
from ledger.ledger import audit_count


@dataclass
class ModuleLine:
    module: str
    calls: int = 0
    hosts: set[str] = field(default_factory=set)
    bytes_out: int = 0
    bytes_in: int = 0
    errors: int = 0
    self_egress: int = 0
    last_ts: int = 0


@dataclass
class Summary:
    rows: int
    modules: dict[str, ModuleLine]
    self_egress: int
    dropped: int          # events the auditor failed to record (sum of gap rows)
    audit_facts: dict[str, int]


def summarize(ledger) -> Summary:
    """Aggregate in SQL so a large ledger is summarised without loading it."""
    con = ledger.con
    modules: dict[str, ModuleLine] = {}
    for module, calls, out_b, in_b, errors, selfe, last in con.execute(
            "SELECT module, count(*), sum(req_bytes), sum(resp_bytes), sum(error != ''), sum(self_egress), max(ts) "
            "FROM egress_log WHERE channel != ? GROUP BY module ORDER BY module", (AUDIT,)):
        modules[module or "(unattributed)"] = ModuleLine(module or "(unattributed)", calls, set(), out_b, in_b, errors, selfe, last)
    for module, host in con.execute(
            "SELECT DISTINCT module, host FROM egress_log WHERE channel != ? AND host != ''", (AUDIT,)):
        modules[module or "(unattributed)"].hosts.add(host)
    facts = dict(con.execute("SELECT method, count(*) FROM egress_log WHERE channel = ? GROUP BY method", (AUDIT,)))
    dropped = 0
    for (detail,) in con.execute("SELECT url_path FROM egress_log WHERE channel = ? AND method = 'gap'", (AUDIT,)):
        dropped += audit_count(detail, "dropped")
    rows = ledger.count()
    return Summary(rows, modules, sum(m.self_egress for m in modules.values()), dropped, facts)


def format_report(summary: Summary, ledger_path: str) -> str:
    lines = [f"ledger: {ledger_path}", f"rows: {summary.rows}"]
    alarm = " (ALARM: the auditor's own packages made network calls)" if summary.self_egress else ""
    lines.append(f"Self-egress: {summary.self_egress}{alarm}")
    lines.append(f"Dropped events: {summary.dropped}" + (" (the auditor failed open; see gap rows)" if summary.dropped else ""))
    if summary.audit_facts:
        lines.append("audit facts: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.audit_facts.items())))
    lines.append("")
    header = f"{'module':<28} {'calls':>7} {'hosts':>5} {'bytes out':>11} {'bytes in':>11} {'errors':>6} {'self':>5}  hosts"
    lines.append(header)
    lines.append("-" * len(header))
    for m in summary.modules.values():
        hosts = ", ".join(sorted(m.hosts)[:4]) + (" ..." if len(m.hosts) > 4 else "")
        lines.append(f"{m.module[:28]:<28} {m.calls:>7} {len(m.hosts):>5} {m.bytes_out:>11} {m.bytes_in:>11} "
                     f"{m.errors:>6} {m.self_egress:>5}  {hosts}")
    if not summary.modules:
        lines.append("(no network calls recorded)")
    return "\n".join(lines)
