"""The parent's end of the relay: receive the records of every child of `netaudit run`, append them.

One AF_UNIX datagram socket, bound in the run's private folder, and one receiver thread. The thread
decodes each datagram (interceptor.relay.decode: the wire format and its checks live there),
turns payload digests into fingerprints with the ledger's salt, and appends what it received as
column values (`Ledger.append_values`: no NetEvent is built), one transaction per batch. A child's
`hello` becomes its `interceptor_installed` row, its `gap` a gap row, and the bootstrap's `unaudited` (a process
where the interceptor could not be installed) an `interceptor_not_installed` row, all with the
child's pid.

Nothing a child sends can stop the receiver: a malformed or oversized datagram, or one row of a
datagram that fails its checks, is dropped and counted (`rejected`), and the count goes into the
chain as a gap row (reason `relay_<why>`), so the drop is visible. A batch the ledger refuses is
retried row by row; the rows it still refuses are counted the same way. `stop()` drains every
datagram already queued before it returns.

Misses the receiver could not write before it stopped (the ledger's folder was removed and never
came back) must not vanish with it. They are kept beside the keys, the one place that outlives a
ledger file and that only the auditor writes: a small file `KEY_DIR/unwritten/ID.gap` (the
ledger's path, the count, t1, t2, the reasons), and `unwritten` says how many. The next receiver
that opens a ledger at that path (a later `netaudit run`, or writer process) takes the file and
writes its count in its first gap row, with `carried_ID` among the reasons; the file is removed
once that row is in. Taking is locking the file (flock), then a rename to `ID.claimed-PID`, and
the taker holds the lock until the count is in the chain or given back: so two receivers never both
write one count, and a claim whose lock is free was left by a receiver that died (a pid cannot
tell: another process may have it now). Such a claim is taken again only if no gap row names its ID.
Where the key dir's file system has no flock (flock fails otherwise than "held"), the pid in the
claim's name decides, as before. A receiver of a version before these locks holds no lock: run one
version of netaudit on a key dir at a time.
`netaudit run` also says so on stderr (its exit code stays the program's: the auditor never
changes the outcome of what it audits). Why not elsewhere: a side file next to the ledger would
be gone with its folder; stderr alone is lost for the writer process, whose stderr is closed.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid

from interceptor.event import AUDIT
from interceptor.relay import MAX_DATAGRAM, MalformedDatagram, decode
from ledger.errors import LedgerError
from ledger.ledger import Ledger, audit_detail, audit_event, event_values, fields_values
from verifier.format import COLUMNS

_COLUMN_NAMES = [name for name, _ in COLUMNS]

POLL_S = 0.2
BATCH = 512
RCVBUF = 4 * 1024 * 1024
SENDERS_KEPT = 256            # senders remembered before those whose process is gone are forgotten
EXIT_CHECK_S = 2.0            # how often the senders gone without their bye are looked for
UNFLUSHED = "interceptor_exit_unflushed"  # the fact of a sender gone without its bye
UNWRITTEN = "unwritten"       # folder in the key dir: miss counts kept until a ledger holds them


def _file_id(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class RelayReceiver:
    """Bind `path`, then `start()`; `stop()` drains and closes. Counters are for tests and reports."""

    def __init__(self, ledger: Ledger, path: str, batch_size: int = BATCH):
        self.ledger = ledger
        self.path = path
        self.batch_size = batch_size
        self.datagrams = 0            # datagrams received
        self.recorded = 0             # rows appended
        self.rejected: dict[str, int] = {}   # datagrams or rows dropped, by reason
        self._salt = ledger.hmac_salt  # fail before the program starts if the key is unusable
        self._file_id = _file_id(ledger.path)
        self._stale = False           # the file was deleted or replaced: open the path again
        self._gap = [0, 0, 0, set()]  # dropped, t1, t2, reasons: not yet in the chain
        self._syncs: list[tuple[int, int]] = []  # (pid, token) to answer after the next append
        self.unwritten = 0            # misses still out of the chain when stop() returned (kept: see above)
        self.unwritten_kept = ""      # the folder that keeps their count, or "" when it could not be kept
        self.unwritten_error = ""     # why it could not
        # Per sender pid since its hello: [hello ts, version, events, gap misses] received (each
        # appended, or counted in our gap row), for the hello repeated in a reopened ledger file
        # (_check_file); this batch's counts join them once the batch is handled.
        self._senders: dict[int, list] = {}
        # Senders whose process was found gone, not having said bye: pid -> (its _senders entry,
        # the drain count then). Recorded as UNFLUSHED once the socket has been drained after that
        # (a bye sent before the process ended is read by then), unless the bye came.
        self._suspects: dict[int, tuple] = {}
        self._drains = 0              # times _receive found the socket empty
        self._checked_at = time.monotonic()
        self._forget_at = SENDERS_KEPT  # then twice the living senders: one entry per process, not per pid ever
        self._batch: dict[int, list] = {}
        self._carried: list[tuple[str, int, int]] = []  # (claimed file, count, its locked fd): kept counts now in _gap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netaudit-relay", daemon=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(path)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            except OSError:
                pass  # the system's default queue; senders then wait a little more
        except BaseException:
            self._sock.close()
            raise
        self._adopt_unwritten()

    def start(self) -> "RelayReceiver":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Record every datagram already sent, then close the socket."""
        self._stop.set()
        self._thread.join(timeout)
        self._sock.close()
        if self._gap[0] and not self._thread.is_alive():
            self._keep_unwritten()

    # ---- misses kept beside the keys until a ledger holds them ------------------------------

    def _unwritten_dir(self) -> str:
        return os.path.join(self.ledger.key_dir, UNWRITTEN)

    def _keep_unwritten(self) -> None:
        """Keep the misses not yet in the chain (see the module's docstring). Counts taken from
        earlier receivers go back as they were; the rest into a new file."""
        gap, folder = self._gap, self._unwritten_dir()
        carried, self._carried = self._carried, []
        for claimed, _, fd in carried:  # released: their own files, for the next receiver
            try:
                os.rename(claimed, claimed[:claimed.rindex(".")] + ".gap")
            except OSError:
                pass
            os.close(fd)
        rest = gap[0] - sum(n for _, n, _ in carried)
        self.unwritten = gap[0]
        self.unwritten_kept = ""
        if rest <= 0:
            self.unwritten_kept = folder
            return
        record = {"ledger": os.path.abspath(self.ledger.path), "dropped": rest, "t1": gap[1], "t2": gap[2],
                  "reason": ",".join(sorted(r for r in gap[3] if not r.startswith("carried_")))}
        name = os.path.join(folder, uuid.uuid4().hex)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            with open(name + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(name + ".tmp", name + ".gap")  # whole, or not there
            self.unwritten_kept = folder
        except OSError as exc:  # nowhere to keep it: `unwritten` still says how many (netaudit run prints it)
            self.unwritten_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            try:
                os.unlink(name + ".tmp")
            except OSError:
                pass

    def _adopt_unwritten(self) -> None:
        """Take the kept counts for this ledger's path: they go into the next gap row."""
        folder, me = self._unwritten_dir(), os.getpid()
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        ours = {claimed for claimed, _, _ in self._carried}
        for name in names:
            rid, _, state = name.partition(".")
            if state != "gap" and not state.startswith("claimed-"):
                continue
            path = os.path.join(folder, name)
            if path in ours:
                continue
            fd, locked = _locked(path)
            if fd is None:
                continue  # a living receiver holds it (or took it since the listing)
            holder = state[len("claimed-"):]
            if not locked and holder.isdigit() and _alive(int(holder)):
                os.close(fd)  # no lock to tell by (a file system without flock): its pid decides
                continue
            taken = False
            try:
                if state != "gap":
                    held = self._holds(rid)
                    if held:
                        _unlink(path)  # its receiver wrote it in the chain, then died
                    if held is not False:
                        continue  # in the chain, or the ledger cannot say: leave it
                with open(path, encoding="utf-8") as f:
                    record = json.load(f)
                if record["ledger"] != os.path.abspath(self.ledger.path):
                    continue
                n, t1, t2 = int(record["dropped"]), int(record["t1"]), int(record["t2"])
                claimed = os.path.join(folder, f"{rid}.claimed-{me}")
                os.rename(path, claimed)  # the lock goes with the file
                taken = True
            except (OSError, ValueError, KeyError, TypeError):
                continue
            finally:
                if not taken:
                    os.close(fd)
            gap = self._gap
            gap[1] = min(gap[1], t1) if gap[0] else t1
            gap[2] = max(gap[2], t2)
            gap[0] += n
            gap[3].update(r for r in str(record.get("reason", "")).split(",") if r)
            gap[3].add(f"carried_{rid}")
            self._carried.append((claimed, n, fd))

    def _holds(self, rid: str):
        """Whether the ledger has a gap row that carried kept count `rid` (a claim whose receiver
        died after writing it, before removing its file); None when it cannot tell."""
        try:
            return bool(self.ledger.con.execute(
                "SELECT 1 FROM egress_log WHERE channel = 'audit' AND method = 'gap' AND url_path LIKE ? LIMIT 1",
                (f"%carried_{rid}%",)).fetchall())
        except Exception:
            return None

    # ---- the receiver thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                rows = self._receive(wait=not stopping)
                if rows or self._gap[0]:
                    self._append(rows)
                self._count_batch()
                self._answer_syncs()
                if len(self._senders) >= self._forget_at:
                    self._forget_gone()
                self._check_exits(final=stopping and not rows)
            except Exception as exc:  # never let one fault end the thread: count it, go on
                self._count_batch()
                self._reject(f"relay_{type(exc).__name__}")
                time.sleep(POLL_S)
                rows = None
            if stopping and not rows:
                if self._gap[0]:
                    self._append([])  # a fault counted just above: its gap row goes in before the end
                return

    def _receive(self, wait: bool) -> list:
        """Up to batch_size rows from the datagrams queued now (waiting up to POLL_S for a first)."""
        sock, rows = self._sock, []
        sock.settimeout(POLL_S if wait else 0.0)
        while len(rows) < self.batch_size:
            try:
                data = sock.recv(MAX_DATAGRAM + 1)  # one byte more: a longer datagram is oversized
            except (BlockingIOError, TimeoutError, InterruptedError):
                self._drains += 1
                break
            self.datagrams += 1
            sock.settimeout(0.0)  # then take what is queued, without waiting
            try:
                msg = decode(data, self._salt, fields=True)
            except MalformedDatagram as exc:
                self._reject(f"relay_{exc.reason}")
                continue
            except Exception as exc:  # a fault of decode's own: it costs this datagram, not the rows before it
                self._reject(f"relay_{type(exc).__name__}")
                continue
            if msg.kind == "events":
                rows.extend(map(fields_values, msg.events))
                for reason in msg.rejected:
                    self._reject(f"relay_{reason}")
                self._batch.setdefault(msg.pid, [0, 0])[0] += len(msg.events) + len(msg.rejected)
            elif msg.kind == "hello":
                d = msg.detail
                rows.append(self._fact("interceptor_installed", d["ts"], msg.pid,
                                       version=d["version"], pid=msg.pid, via="relay"))
                self._senders[msg.pid] = [d["ts"], d["version"], 0, 0]  # a new process, if the pid is reused
                self._batch.pop(msg.pid, None)
            elif msg.kind == "unaudited":
                d = msg.detail
                rows.append(self._fact("interceptor_not_installed", d["ts"], msg.pid, pid=msg.pid,
                                       python=d["python"], reason=d["reason"]))
            elif msg.kind == "gap":
                d = msg.detail
                rows.append(self._fact("gap", d["t1"], msg.pid, dropped=d["dropped"], until=d["t2"],
                                       reason=d["reason"]))
                self._batch.setdefault(msg.pid, [0, 0])[1] += d["dropped"]
            elif msg.kind == "bye":  # its exit's flush is done: nothing of it was left unsent
                self._senders.pop(msg.pid, None)
                self._suspects.pop(msg.pid, None)
                self._batch.pop(msg.pid, None)
            elif msg.kind == "sync":  # answered once what came before it is appended
                self._syncs.append((msg.pid, msg.detail["token"]))
                break
        return rows

    def _count_batch(self) -> None:
        batch, self._batch = self._batch, {}
        for pid, (events, gaps) in batch.items():
            sender = self._senders.get(pid)
            if sender is not None:
                sender[2] += events
                sender[3] += gaps

    def _forget_gone(self) -> None:
        """Forget the senders whose process is gone. What is kept of a sender serves only its own
        count of what it relayed (a hello repeated in a reopened file, _rehellos), which a gone
        process never makes. A writer that serves processes for long (Odoo's recycled workers,
        a build's many subprocesses) keeps an entry per living process, not one per process ever.
        A gone one that has not said bye is a suspect (_check_exits)."""
        living = {}
        for pid, sender in self._senders.items():
            if _alive(pid):
                living[pid] = sender
            elif pid not in self._suspects:
                self._suspects[pid] = (sender, self._drains)
        self._senders = living
        self._forget_at = max(SENDERS_KEPT, 2 * len(self._senders))

    def _check_exits(self, final: bool = False) -> None:
        """Record the senders gone without their bye: killed by a signal, or ended past the exit's
        flush otherwise; what they had queued and not sent is lost, and this fact says so (helper
        39, H2: Pool.terminate()'s workers lost their last calls without a trace). Every
        EXIT_CHECK_S, and at the end (`final`: the socket just found empty; one more drain after
        the look, for a bye sent by a process that ended since)."""
        now = time.monotonic()
        if not final and now - self._checked_at < EXIT_CHECK_S:
            return
        self._checked_at = now
        self._forget_gone()
        if final and self._suspects:
            rows = self._receive(wait=False)
            if rows or self._gap[0]:
                self._append(rows)
            self._count_batch()
        ready = [(pid, sender) for pid, (sender, drains) in self._suspects.items() if drains < self._drains]
        if not ready:
            return
        for pid, _ in ready:
            del self._suspects[pid]
        ts = time.time_ns()
        self._append([self._fact(UNFLUSHED, ts, pid, pid=pid, relayed=sender[2], hello=sender[0])
                      for pid, sender in ready])

    def _rehellos(self) -> list:
        """Each living sender's hello again, for a ledger file opened in place of a replaced one:
        the sender's own count of what it relayed (ledger.process_writer, for a helper it can no
        longer reach) is anchored on its hello, which is in the old file. `carried_events` and
        `carried_gaps` are what it had relayed until then (appended to the old file, or counted
        in our gap row): no longer in this ledger, and not missed either."""
        self._forget_gone()
        return [self._fact("interceptor_installed", ts, pid, version=version, pid=pid, via="relay",
                           reopened=1, carried_events=events, carried_gaps=gaps)
                for pid, (ts, version, events, gaps) in self._senders.items()]

    def _answer_syncs(self) -> None:
        folder = os.path.dirname(self.path)
        while self._syncs:
            pid, token = self._syncs.pop(0)
            try:
                open(os.path.join(folder, f"synced-{pid}-{token}"), "w").close()
            except OSError:
                pass  # the sender's wait times out: its flush says it did not finish

    @staticmethod
    def _fact(fact: str, ts: int, sender: int, **detail) -> tuple:
        return event_values(dataclasses.replace(audit_event(fact, ts, **detail), pid=sender))

    def _reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n
        now = time.time_ns()
        gap = self._gap
        if gap[0] == 0:
            gap[1] = now
        gap[0] += n
        gap[2] = now
        gap[3].add(reason)

    def _reject_rows(self, reason: str, rows) -> None:
        """Rows that could not be appended become misses. A sender's gap row stands for the
        `dropped` events it counts, with their span and reasons, not for one row."""
        plain = 0
        for row in rows:
            counted = _sender_gap(row)
            if counted is None:
                plain += 1
                continue
            dropped, t1, t2, reasons = counted
            if dropped > 0:
                self._reject(reason, dropped)
                gap = self._gap
                gap[1], gap[2] = min(gap[1], t1), max(gap[2], t2)
                gap[3].update(reasons)
        if plain:
            self._reject(reason, plain)

    def _check_file(self) -> None:
        """Raise if the ledger's file is no longer the one we opened: a deleted or replaced file
        would swallow rows unseen. As ledger.sink.LedgerWriter does, the rows at hand are then
        misses, and the path is opened again (created if need be) at the next append, once its
        folder exists again; the misses go into that ledger's gap row."""
        led = self.ledger
        if self._stale:
            if not os.path.isdir(os.path.dirname(os.path.abspath(led.path))):
                raise LedgerError(f"{led.path}: the ledger's folder is gone")
            new = Ledger.open(led.path, key_dir=led.key_dir, create=True)
            try:
                self._salt = new.hmac_salt  # a new ledger has its own salt: later fingerprints use it
                self._file_id = _file_id(new.path)
                hellos = self._rehellos()
                if hellos:
                    new.append_values(hellos)
            except BaseException:
                new.close()
                raise
            self.ledger, self._stale = new, False
            try:
                led.close()
            except Exception:
                pass
            self._adopt_unwritten()
            return
        if _file_id(led.path) != self._file_id:
            self._stale = True
            raise LedgerError(f"{led.path}: the ledger file was deleted or replaced")

    def _append(self, rows: list) -> None:
        """Append the rows (after the pending gap row, if any) in one transaction."""
        try:
            self._check_file()
        except Exception as exc:  # these rows are misses: they come back in the gap row
            self._reject_rows(f"relay_{type(exc).__name__}", rows)
            return
        gap = self._gap
        pending = gap[0]
        if pending:
            rows = [event_values(audit_event("gap", gap[1], dropped=pending, until=gap[2],
                                             reason=",".join(sorted(gap[3])))), *rows]
        faults: list[str] = []
        try:
            self.ledger.append_values(rows)
            gap_written, recorded = bool(pending), len(rows) - bool(pending)
        except Exception:  # one row the ledger refuses must not cost the others: go row by row
            gap_written, recorded = False, 0
            for i, row in enumerate(rows):
                try:
                    self.ledger.append_values([row])
                except Exception as exc:
                    if not (pending and i == 0):
                        faults.append((f"relay_{type(exc).__name__}", row))
                    continue
                if pending and i == 0:
                    gap_written = True
                else:
                    recorded += 1
        if gap_written:
            gap[0] -= pending
            if gap[0] == 0:
                gap[3] = set()
            carried, self._carried = self._carried, []
            for claimed, _, fd in carried:  # in the chain now
                _unlink(claimed)
                os.close(fd)
        for reason, row in faults:
            self._reject_rows(reason, [row])
        self.recorded += recorded


_TS, _CHANNEL, _METHOD, _DETAIL = (_COLUMN_NAMES.index(c) for c in ("ts", "channel", "method", "url_path"))


def _sender_gap(row):
    """(dropped, t1, t2, reasons) of a sender's gap row (an admin fact "gap" in column values),
    else None."""
    if row[_CHANNEL] != AUDIT or row[_METHOD] != "gap":
        return None
    try:
        detail = audit_detail(row[_DETAIL])
        dropped = int(detail.get("dropped", "1"))
        until = int(detail.get("until", row[_TS]))
    except (ValueError, TypeError):
        return (1, row[_TS], row[_TS], set())
    return dropped, row[_TS], max(until, row[_TS]), {r for r in detail.get("reason", "").split(",") if r}


def _locked(path: str):
    """(a descriptor of `path`, whether it holds the file's exclusive lock), or (None, False) when
    another descriptor holds the lock (or the file is gone). The lock lasts as long as the
    descriptor: no longer than its process and the children it forked. A file system that cannot
    lock (flock fails otherwise) gives the descriptor without the lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, False
    except OSError:
        return fd, False
    return fd, True


def _alive(pid: int) -> bool:
    if not 0 < pid < 2 ** 31:  # a sender may say any int: os.kill would raise, or signal a group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
