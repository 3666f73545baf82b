# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Everything that couples the core packages (interceptor, ledger, verifier) to Odoo,
besides the models and views: where ledgers live, the post_load hook, the per-database sink."""
from . import paths
from . import ingress
from . import hooks
from . import router
from . import forensic
