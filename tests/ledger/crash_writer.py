"""Writer process for the kill -9 test: appends signed blocks to HOME/data/chain until killed.

Usage: python crash_writer.py HOME TXS_PER_BLOCK. Prints "committed <height>" after each block's write has
returned (flushed), so the test knows which heights must survive the kill.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testkit"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ledger_helpers import T0, Consortium  # noqa: E402

from node.ledger.chain import Chain  # noqa: E402
from node.ledger.store import Store  # noqa: E402


def main() -> None:
    home, per_block = sys.argv[1], int(sys.argv[2])
    c = Consortium()
    store = Store(os.path.join(home, "data", "chain"), sync=False)
    chain = Chain(c.genesis, store)
    c._n = store.height * per_block  # fresh nonces after a restart
    while True:
        height = chain.height + 1
        txs = [c.tx(i % 4) for i in range(per_block)]
        payload = chain.build_proposal(height, height % 4, T0, txs)
        chain.validate_proposal(height, payload, now_ms=T0)
        chain.execute(payload, c.certificate(chain, payload, height, view=height // 3))
        print(f"committed {height}", flush=True)


if __name__ == "__main__":
    main()
