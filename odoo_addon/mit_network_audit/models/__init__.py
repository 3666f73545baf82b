# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
from . import network_egress_log
from . import network_audit_ledger
from . import network_audit_declared_host
from . import network_audit_forensic
from . import res_config_settings
from . import ir_http
