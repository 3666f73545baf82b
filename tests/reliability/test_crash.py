"""Crashes: a writer SIGKILLed at a random moment never leaves a ledger that fails to open, fails
to verify, holds half a batch, or cannot be appended to from the right seq and hash.

Each round forks a writer that opens the ledger and loops over one step (append a batch, sign a
head, or vacuum), and kills it with SIGKILL after a random delay. A shared byte says whether the
kill landed inside the step; the figures count those rounds too.
"""
from __future__ import annotations

import mmap
import os
import random
import signal
import sys
import time
import traceback

import pytest

from conftest import make_event
from ledger import Ledger
from verifier.verify import verify_ledger

from .conftest import scaled

ROUNDS = scaled(50, 1000)           # per step kind
EPOCH = 100                         # rounds per ledger (heads pile up: the verifier checks them all)
# The vacuum runs at the real clock's "now" with 0 days of retention: every earlier row is past
# retention. (A fixed far-future "now" would stamp the vacuum's own row with that time, and the
# next vacuum stops at that "recent" row: pruning is always a prefix of the chain.)


def _child(path: str, key_dir: str, step: str, rnd: int, flag: mmap.mmap) -> None:
    """The writer: open, then loop over `step` until killed. flag[0] = 1 while inside the step."""
    rng = random.Random(rnd)
    led = Ledger.open(path, key_dir=key_dir)
    n = 0
    while True:
        k = rng.randint(1, 20)
        batch = [make_event(n * 20 + i, module=f"r{rnd}b{n}k{k}") for i in range(k)]
        if step == "append":
            flag[0] = 1
            led.append_many(batch)
            flag[0] = 0
        elif step == "sign_head":
            led.append_many(batch)
            flag[0] = 1
            led.sign_head()
            flag[0] = 0
        else:
            led.append_many(batch)
            led.sign_head()
            flag[0] = 1
            led.vacuum(0)
            flag[0] = 0
        flag[1] = min(255, flag[1] + 1)
        n += 1


def _fork_and_kill(path: str, key_dir: str, step: str, rnd: int, rng: random.Random) -> tuple[bool, int]:
    flag = mmap.mmap(-1, 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            _child(path, key_dir, step, rnd, flag)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(3)
    time.sleep(rng.uniform(0.0, 0.06))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"round {rnd}: the writer ended by itself (status {status}) before it was killed"
    inside, done = flag[0] == 1, flag[1]
    flag.close()
    return inside, done


def _check_after_crash(path: str, key_dir: str, pub: str, rnd: int) -> None:
    led = Ledger.open(path, key_dir=key_dir)                       # 1. it always opens
    try:
        # read as the ledger and netaudit-verify read it: a SIGKILL inside sign_head can leave the
        # last checkpoint torn (the kernel may stop a write at a page boundary for a fatal signal)
        heads = led.keys.read_heads()
        v = verify_ledger(path, pub, heads)                        # 2. it always verifies
        assert v.valid, f"round {rnd}: {v.message}"
        first = led.con.execute("SELECT min(chain_seq) FROM egress_log").fetchall()[0][0]
        # 3. no half-written batch: a batch's rows are all there, contiguous (a prune may cut
        #    the front of the oldest batch, never anything else)
        for module, count, lo, hi in led.con.execute(
                "SELECT module, count(*), min(chain_seq), max(chain_seq) FROM egress_log "
                "WHERE module GLOB 'r*b*k*' GROUP BY module"):
            k = int(module.rsplit("k", 1)[1])
            assert hi - lo + 1 == count, f"round {rnd}: batch {module} is not contiguous"
            assert count == k or (count < k and lo == first), \
                f"round {rnd}: batch {module} has {count} of its {k} rows"
        # 4. appending continues from the right seq and hash
        seq, digest = led.last()
        assert led.append(make_event(rnd, module="after-crash")) == seq + 1
        prev = led.con.execute("SELECT prev_hash FROM egress_log WHERE chain_seq = ?", (seq + 1,)).fetchall()[0][0]
        assert prev == digest
    finally:
        led.close()


@pytest.mark.parametrize("step", ["append", "sign_head", "vacuum"])
def test_sigkill_at_a_random_moment(home, step, figures):
    key_dir = str(home / "keys")
    rng = random.Random(f"crash-{step}")
    inside = 0
    for rnd in range(ROUNDS):
        if rnd % EPOCH == 0:  # a fresh ledger now and then: every head is checked at every round
            path = str(home / f"crash-{step}-{rnd}.sqlite")
            with Ledger.open(path, key_dir=key_dir) as led:
                pub = led.public_key_text
                led.sign_head()
        hit, _ = _fork_and_kill(path, key_dir, step, rnd, rng)
        inside += hit
        _check_after_crash(path, key_dir, pub, rnd)
        if rnd % 25 == 24:  # keep the ledger small: sign and prune all but the newest rows
            with Ledger.open(path, key_dir=key_dir) as led:
                led.sign_head()
                led.vacuum(0)
    figures.crash[f"{step}: rounds"] = ROUNDS
    figures.crash[f"{step}: killed inside the step"] = inside
    assert inside > 0, f"no kill landed inside {step}: the loop does not test what it says"


def test_regression_torn_checkpoint_in_the_heads_file(home, tmp_path):
    """Found by the soak: a SIGKILL inside sign_head cut the heads file's last checkpoint short (a
    write the kernel stops at a page boundary for a fatal signal). Every later head was appended
    to the torn one, and the whole heads file failed to parse ('malformed checkpoint') for the
    verifier and the ledger alike."""
    import subprocess
    import sys

    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    led = Ledger.open(path, key_dir=key_dir)
    led.append_many(make_event(i) for i in range(5))
    led.sign_head()
    heads_path = led.keys.heads_path
    text = open(heads_path).read()
    led.sign_head()
    with open(heads_path, "r+") as f:      # the second checkpoint, torn inside its signature
        f.truncate(len(text) + len(led.keys.read_heads()[-1].to_text()) - 30)
    assert [h.seq for h in led.keys.read_heads()] == [6]
    led.append(make_event(9))
    led.sign_head()                          # appended after the torn one, in a block of its own
    assert [h.seq for h in led.keys.read_heads()] == [6, 9]
    pub = led.public_key_text
    led.close()
    p = subprocess.run([sys.executable, "-m", "verifier", path, "--pubkey", pub, "--head", heads_path],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(heads_path, "a") as f:         # a complete checkpoint that is wrong still fails
        f.write("\n" + led_text_with_bad_hash(text) + "\n")
    p = subprocess.run([sys.executable, "-m", "verifier", path, "--pubkey", pub, "--head", heads_path],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "malformed checkpoint" in p.stderr


def led_text_with_bad_hash(text: str) -> str:
    first = text.strip("\n").split("\n\n")[0].split("\n")
    return "\n".join("hash: 00" if line.startswith("hash: ") else line for line in first) + "\n"
