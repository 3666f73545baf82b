"""Regenerate the golden vectors: python tests/vectors/generate.py > tests/vectors/format_v1.json

Everything is fixed: the signing key's seed, the ledger id, the rows and the signing time, so the
output is byte-for-byte stable (Ed25519 signatures are deterministic). A change of format changes
these bytes, and tests/ledger/test_vectors.py fails until FORMAT_VERSION is bumped and this
file is regenerated on purpose.
"""
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from verifier.format import (  # noqa: E402
    CHECKPOINT_ORIGIN, COLUMN_NAMES, FORMAT_VERSION, GENESIS_HASH, Checkpoint, encode_row, key_id,
    public_key_to_text, row_hash,
)

SEED = bytes(range(32))  # test key only; never used outside these vectors
LEDGER_ID = "00000000-0000-4000-8000-000000000001"

ROWS = [
    # ts, duration_ms, direction, channel, protocol, method, host, url_path, query_keys, src_ip,
    # src_port, dst_ip, dst_port, status, error, req_bytes, resp_bytes, header_names,
    # fingerprint, module, author, call_site, pid, self_egress
    [1764806400000000000, 0.0, "egress", "audit", "", "ledger_opened", "", "created=1;host=vectors", "", "",
     0, "", 0, "", "", 0, 0, "", "", "", "", "", 4242, 0],
    [1764806400123456789, 12.5, "egress", "http", "https", "POST", "api.example.com", "/v1/orders", "page token",
     "127.0.0.1", 50412, "93.184.216.34", 443, "201", "", 512, 2048, "Host Content-Type Authorization",
     "8f14e45fceea167a5a36dedd4bea2543", "sale", "Odoo S.A.", "odoo/addons/sale/models/sale_order.py:812:_push", 4242, 0],
    [1764806401000000000, 3.25, "egress", "smtp", "smtps", "MAIL", "smtp.example.org", "", "", "10.0.0.2",
     40000, "203.0.113.9", 465, "250", "", 1400, 120, "", "c4ca4238a0b923820dcc509a6f75849b", "mail", "Odoo S.A.",
     "odoo/addons/mail/models/ir_mail_server.py:700:send_email", 4242, 0],
    [1764806402000000000, 0.75, "egress", "socket", "tcp", "connect", "bücher.example", "", "", "", 0, "::1", 8069,
     "", "ConnectionRefusedError", 0, 0, "", "", "mit_network_audit", "MIT Network Audit", "glue/x.py:1:f", 4242, 1],
]


def main() -> None:
    sk = Ed25519PrivateKey.from_private_bytes(SEED)
    pub = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    prev = GENESIS_HASH
    rows = []
    for seq, values in enumerate(ROWS, start=1):
        digest = row_hash(LEDGER_ID, seq, values, prev)
        rows.append({"chain_seq": seq, "values": dict(zip(COLUMN_NAMES, values)), "prev_hash": prev.hex(),
                     "encoding": encode_row(LEDGER_ID, seq, values).hex(), "row_hash": digest.hex()})
        prev = digest
    cp = Checkpoint(CHECKPOINT_ORIGIN, LEDGER_ID, len(ROWS), prev, 1764806403000000000, key_id(pub))
    cp = dataclasses.replace(cp, signature=sk.sign(cp.body()))
    out = {
        "format_version": FORMAT_VERSION,
        "ledger_id": LEDGER_ID,
        "private_key_seed": SEED.hex(),
        "public_key": public_key_to_text(pub),
        "key_id": key_id(pub),
        "rows": rows,
        "signed_head": {"body": cp.body().decode(), "signature": cp.signature.hex(), "text": cp.to_text()},
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
