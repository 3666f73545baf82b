# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Route each captured call to the ledger of the Odoo database it happened in.

The interceptor is process-wide; one Odoo process serves several databases. Odoo names the
database of the current request, cron or test on the thread (threading.current_thread().dbname);
the router reads it on the calling thread and hands the record to that database's own sink
(interceptor.Sink: bounded queue, one writer thread, gap rows on faults, re-armed after fork; its
writer relays to a helper process that appends, or appends itself: see ledger_sink). Calls made outside any database go to the server-level ledger
"_server", which every database's ingest reads too.
"""
import logging
import os
import threading

from . import paths
from .paths import SERVER_DB
from .ingress import SKIP

_logger = logging.getLogger(__name__)



def current_dbname() -> str:
    name = getattr(threading.current_thread(), "dbname", None)
    return name if isinstance(name, str) and name else SERVER_DB


WRITER_OPTION = "netaudit_writer"  # odoo.conf: "process" (default) or "thread"


def ledger_sink(dbname: str):
    """The interceptor sink of one database, on this host's ledger of that database.

    By default a helper process appends (ledger.process_writer.ProcessWriter: the worker only
    relays each record, and its requests wait less: see the README's benchmark); with
    `netaudit_writer = thread` in odoo.conf the worker's own writer thread does
    (ledger.sink.LedgerWriter: no extra process; a helper holds ~14 MB of its own memory, measured).
    """
    from odoo.tools import config

    from interceptor import Sink

    path, keys = paths.own_ledger_path(dbname), paths.key_dir(dbname)
    if str(config.get(WRITER_OPTION) or "process").strip().lower() == "thread":
        from ledger.sink import LedgerWriter

        return Sink(LedgerWriter(path, keys))
    from ledger.process_writer import ProcessWriter

    return Sink(ProcessWriter(path, keys))


class DatabaseRouter:
    """The sink given to interceptor.install(): submit/miss/flush, routed per database."""

    def __init__(self, sink_factory=ledger_sink):
        self._factory = sink_factory
        self._sinks = {}
        self._lock = threading.Lock()

    def sink_for(self, dbname: str):
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

    def miss(self, ts: int, reason: str, n: int = 1, until: int = 0) -> None:
        self.sink_for(current_dbname()).miss(ts, reason, n=n, until=until)

    def flush(self, timeout: float = 5.0) -> bool:
        return all([sink.flush(timeout) for sink in list(self._sinks.values())])

    def close(self, timeout: float = 5.0) -> None:
        for sink in list(self._sinks.values()):
            sink.close(timeout)

    @property
    def dropped_total(self) -> int:
        return sum(sink.dropped_total for sink in list(self._sinks.values()))


def configured_databases() -> list[str]:
    """The databases named in the server's configuration (-d/--database, db_name), if any."""
    from odoo.tools import config

    return [name.strip() for name in str(config.get("db_name") or "").split(",") if name.strip()]


def _start_configured(router: "DatabaseRouter") -> None:
    """Start the writer helpers of the configured databases now, in the process that loads the
    addon: under prefork that is the master, so its workers, forked later, share one helper per
    database instead of starting one each. Other databases get theirs at their first call."""
    for dbname in configured_databases():
        try:
            start = getattr(router.sink_for(dbname).writer, "start", None)
            if start is not None:
                start()
        except Exception as exc:  # fail-open: the first write tries again, or falls back
            _logger.warning("mit_network_audit: ledger writer for %s not started (%s)", dbname, exc)


def install() -> "DatabaseRouter":
    """Install the interceptor with a per-database router; returns the router in force."""
    import interceptor

    router = DatabaseRouter()
    if not interceptor.install(sink=router):
        current = interceptor.current_sink()
        if isinstance(current, DatabaseRouter):
            return current
        # Someone installed it first (e.g. `netaudit run`): route Odoo's calls from now on.
        interceptor.use_sink(router)
        if not interceptor.installed():
            # Another copy of the interceptor records this process (netaudit run's, of another
            # version than Odoo's): this one captures nothing, and its sink would stay empty.
            raise RuntimeError("another copy of the interceptor records this process's calls (netaudit "
                               "run's, of another version?): they go to its ledger, not to the databases'")
    _start_configured(router)
    from . import ingress

    ingress.install()
    _logger.info("mit_network_audit: interceptor %s installed (pid %s)",
                 interceptor.VERSION, os.getpid())
    return router
