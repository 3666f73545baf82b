"""The writer thread's fast path (Record -> column values, no NetEvent) writes exactly the rows the
NetEvent path writes: same columns, same fingerprint, and a chain the verifier accepts."""
from __future__ import annotations

from interceptor.capture import Record
from ledger.ledger import event_values, fields_values
from ledger.sink import LedgerWriter
from verifier.verify import verify_ledger


def _record(i: int, text: str = "") -> Record:
    rec = Record("http", "https", "post", f"user:pw@h{i}.example.com", 443)
    rec.url_path = f"/v1/orders/{i}{text}"
    rec.query_keys = ["page", "to ken"]
    rec.header_names = ["Host", "Content-Type", "X-Trace id"]
    rec.status = 201
    rec.src_ip, rec.src_port, rec.dst_ip = "127.0.0.1", 40000 + i, "127.0.0.2"
    rec.resp_bytes = 2048
    rec.hash_payload(b"payload-%d" % i)
    rec.module, rec.author, rec.call_site = "sale", "Odoo S.A.", "odoo/addons/sale/models/x.py:12:_push"
    rec.duration_ns = 0 if i % 2 else 12_500_001
    rec.self_egress = bool(i % 3 == 0)
    return rec


def test_records_write_the_same_rows_as_events(home):
    path = str(home / "l.sqlite")
    writer = LedgerWriter(path, str(home / "keys"))
    records = [_record(i, "é" if i == 3 else "") for i in range(20)]  # one non-ASCII row
    salt = writer.salt
    writer.write_batch([r.to_event(salt) for r in records])
    writer.write_records(records)
    assert [fields_values(r.fields(salt)) for r in records] == [event_values(r.to_event(salt)) for r in records]
    led = writer.ledger
    rows = [row for row in led.rows() if row["channel"] != "audit"]
    assert len(rows) == 40
    strip = lambda row: {k: v for k, v in row.items() if k not in ("chain_seq", "prev_hash", "row_hash")}
    assert [strip(r) for r in rows[:20]] == [strip(r) for r in rows[20:]]
    assert rows[0]["fingerprint"] and rows[0]["host"] == "h0.example.com" and rows[0]["query_keys"] == "page to_ken"
    assert rows[3]["url_path"].endswith("é")
    pub, heads = led.public_key_text, led.keys.read_heads()
    writer.close()
    v = verify_ledger(path, pub, heads)
    assert v.valid, v.message


def test_a_record_with_odd_values_is_written_with_its_batch(home):
    """A port given as a service name (HTTPConnection(host, port="http"), refused before any peer
    address), a custom attribution's None or bytes: the record is written with storable values,
    and the records beside it too (each such value used to cost the whole batch)."""
    path = str(home / "l.sqlite")
    writer = LedgerWriter(path, str(home / "keys"))
    odd = Record("http", "http", "GET", "h.example", "http")
    odd.module, odd.call_site, odd.error, odd.req_bytes = None, b"x.py:1:f", 5, None
    writer.write_records([_record(1), odd, _record(2)])
    rows = [row for row in writer.ledger.rows() if row["channel"] != "audit"]
    pub, heads = writer.ledger.public_key_text, writer.ledger.keys.read_heads()
    writer.close()
    assert [r["host"] for r in rows] == ["h1.example.com", "h.example", "h2.example.com"]
    assert (rows[1]["dst_port"], rows[1]["module"], rows[1]["call_site"], rows[1]["error"]) == (0, "", "x.py:1:f", "5")
    assert verify_ledger(path, pub, heads).valid
