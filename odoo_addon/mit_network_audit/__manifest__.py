# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
{
    "name": "MIT Network Audit",
    "summary": "Tamper-evident record of which module talked to which host, "
    "how much and when - never what was said",
    "version": "18.0.1.0.0",
    "category": "Administration",
    "website": "https://github.com/mit-network-audit/mit-network-audit",
    "author": "MIT Network Audit developers",
    "license": "LGPL-3",
    "depends": ["base_setup", "web"],
    "external_dependencies": {
        "python": ["mit-network-audit", "apsw", "cryptography", "platformdirs"],
    },
    "data": [
        "security/mit_network_audit_security.xml",
        "security/ir.model.access.csv",
        "data/ir_cron.xml",
        "views/network_egress_log_views.xml",
        "views/network_audit_ledger_views.xml",
        "views/network_audit_declared_host_views.xml",
        "views/network_audit_forensic_views.xml",
        "wizard/network_audit_report_views.xml",
        "views/res_config_settings_views.xml",
        "views/menus.xml",
    ],
    "post_load": "post_load",
    "uninstall_hook": "uninstall_hook",
    "application": True,
}
