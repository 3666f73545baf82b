# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
import psycopg2

from odoo.exceptions import AccessError
from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger


@tagged("post_install", "-at_install")
class TestReadOnly(TransactionCase):
    def test_create_refused_even_sudo(self):
        with self.assertRaises(AccessError):
            self.env["network.egress_log"].sudo().create({"chain_seq": 1})
