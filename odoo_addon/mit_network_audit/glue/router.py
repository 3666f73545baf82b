# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Route each captured call to the ledger of the Odoo database it happened in.

The interceptor is process-wide; one Odoo process serves several databases. Odoo names the
database of the current request, cron or test on the thread (threading.current_thread().dbname);
the router reads it on the calling thread and hands the record to that database's own sink
(interceptor.Sink: bounded queue, one writer thread, gap rows on faults). Calls made outside any
database go to the server-level ledger "_server".
"""
import logging
import os
import threading

from . import paths
from .ingress import SKIP

_logger = logging.getLogger(__name__)

SERVER_DB = "_server"


def current_dbname():
    name = getattr(threading.current_thread(), "dbname", None)
    return name if isinstance(name, str) and name else SERVER_DB


class LedgerWriter:
    """The interceptor sink's writer for one database: appends to this host's ledger.

    The ledger is opened lazily on the writer thread; after a fork the child drops the parent's
    connection (never closes it: SQLite handles must not cross a fork) and opens its own.
    """

    def __init__(self, dbname):
        self.dbname = dbname
        self._ledger = None
        self._pid = None

    def _open(self):
        if self._ledger is None or self._pid != os.getpid():
            from ledger import Ledger
            import interceptor

            self._ledger = Ledger.open(paths.own_ledger_path(self.dbname),
                                       key_dir=paths.key_dir(self.dbname), host_id=paths.host_id())
            self._pid = os.getpid()
            self._ledger.append_audit("interceptor_installed", version=interceptor.VERSION,
                                      pid=self._pid, database=self.dbname)
        return self._ledger

    @property
    def salt(self):
        return self._open().hmac_salt

    def write_batch(self, events):
        self._open().append_many(events)

    def write_gap(self, dropped, t1_ns, t2_ns, reason):
        self._open().append_audit("gap", dropped=dropped, t1=t1_ns, t2=t2_ns, reason=reason)

    def after_fork(self):
        self._ledger = None

    def close(self):
        if self._ledger is not None and self._pid == os.getpid():
            self._ledger.close()
        self._ledger = None


class DatabaseRouter:
    """The sink given to interceptor.install(): submit/miss/flush, routed per database."""

    def __init__(self, sink_factory=None):
        from interceptor import Sink

        self._factory = sink_factory or (lambda db: Sink(LedgerWriter(db)))
        self._sinks = {}
        self._lock = threading.Lock()

    def sink_for(self, dbname):
        sink = self._sinks.get(dbname)
        if sink is None:
            with self._lock:
                sink = self._sinks.get(dbname)
                if sink is None:
                    sink = self._sinks[dbname] = self._factory(dbname)
        return sink

    def submit(self, rec):
        if rec.module == SKIP:  # the web client's own traffic (glue/ingress.py)
            return
        self.sink_for(current_dbname()).submit(rec)

    def miss(self, ts, reason, n=1, until=0):
        self.sink_for(current_dbname()).miss(ts, reason, n=n, until=until)

    def flush(self, timeout=5.0):
        return all([sink.flush(timeout) for sink in list(self._sinks.values())])

    def close(self, timeout=5.0):
        for sink in list(self._sinks.values()):
            sink.close(timeout)

    @property
    def dropped_total(self):
        return sum(sink.dropped_total for sink in list(self._sinks.values()))


def install():
    """Install the interceptor with a per-database router; returns the router in force."""
    import interceptor

    router = DatabaseRouter()
    if not interceptor.install(sink=router):
        current = interceptor.current_sink()
        if isinstance(current, DatabaseRouter):
            return current
        # Someone installed it first (e.g. `netaudit run`): route Odoo's calls from now on.
        interceptor.use_sink(router)
    from . import ingress

    ingress.install()
    _logger.info("mit_network_audit: interceptor %s installed (pid %s)",
                 interceptor.VERSION, os.getpid())
    return router
