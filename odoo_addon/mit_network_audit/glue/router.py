# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Route each captured event to the ledger of the Odoo database it happened in.

The interceptor is process-wide; Odoo serves several databases from one process. Odoo names the
database of the current request or cron on the thread (threading.current_thread().dbname); the
router reads it on the calling thread and hands the event to that database's ledger sink.
Events outside any database go to the server-level ledger "_server".
"""
import logging
import threading


_logger = logging.getLogger(__name__)

SERVER_DB = "_server"


def current_dbname():
    return getattr(threading.current_thread(), "dbname", None) or SERVER_DB


def install():
    import interceptor

    if not hasattr(interceptor, "install"):
        raise RuntimeError("this version of the interceptor package has no install()")
    raise RuntimeError("router not wired yet")
