# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
from . import glue
from . import models
from . import wizard
from .glue.hooks import post_load, uninstall_hook
