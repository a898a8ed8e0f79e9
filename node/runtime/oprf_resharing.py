"""A node's part in the OPRF key's on-chain resharing (node.ledger.oprf_reshare decides; this acts).

After every committed block the node feeds the block's `oprf.dealing` txs to its ChainView and then:
  * attests the epoch public parameters it holds, once, while the chain has none recorded for that epoch;
  * as a holder of the current shares, deals once to every later governance member set that differs
    (its share re-dealt, sub-shares sealed to each new member's key), and answers complaints against it;
  * as a member of a new set, opens its boxes, complains against each dealer whose box is bad, acks otherwise;
  * when the chain puts new parameters in force, persists its new share (replacing the old one: the file is
    written whole, then renamed over), then points the tokenizer and the evaluation service at it; a member
    outside the new set erases its share.
Every step is derived from the chain, so a restart rebuilds the view from the store and resumes. What the
node posts is idempotent per (round, step) in memory; after a restart a second dealing is ignored on chain.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import trio

from node.ledger import oprf
from node.ledger import oprf_reshare as rs
from node.ledger.block import APPLIED
from node.ledger.intake import make_tx
from node.ledger.oprf import KeyShare, OprfError
from node.ledger.oprf_reshare import ChainView, RecordedPublic
from node.ledger.tx import decode_tx
from node.privatefiles import write_secret
from node.runtime.tokenizer import KEYS_DIR, write_epoch

__all__ = ["Resharer", "contribution_path", "save_contribution"]

log = logging.getLogger("radchain.oprf_resharing")
TYPE = "oprf.dealing"
TICK_S = 2.0
RETRY_BLOCKS = 20  # a dealing not on chain after this many blocks is posted again
GENESIS_PARAM = "oprf_epoch_public"  # hex of node.ledger.oprf.encode_epoch_public


class Resharer:
    def __init__(self, node) -> None:
        self.node = node
        window = rs.complaint_window(node.genesis.params, node.genesis.param("max_clock_skew_ms"))
        self.view = ChainView(self._members_of, complaint_ms=window, key_ok=self._key_ok,
                              epoch_at=lambda h: self.node.chain.state.epochs.at(h).start,
                              fixed_through=lambda h: self.node.chain.state.epochs.known_through(h))
        carried = node.genesis.params.get(GENESIS_PARAM)
        if carried is not None:  # testnets: the dealer's epoch-1 parameters are part of genesis
            try:
                self.view.seed_genesis(oprf.decode_epoch_public(bytes.fromhex(carried)),
                                       [m.name for m in node.genesis.members])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"genesis params.{GENESIS_PARAM}: {exc}") from None
        self.installed: dict[int, RecordedPublic | None] = {}
        self._contribs: dict[tuple[int, int], oprf.Contribution] = {}
        self._sent: set[tuple] = set()

    # ------------------------------------------------------------------ chain
    def _key_ok(self, member: str, signer: bytes | None) -> bool:
        """Execution admitted only the member's member key of that moment (node.ledger.state); a key the
        member held in some governance epoch, or holds now, is that (a client key never is one)."""
        if signer is None:
            return False
        state = self.node.chain.state
        return state.members.get(member) == signer or any(
            m.name == member and m.pubkey == signer for e in state.epochs.epochs for m in e.members)

    def _members_of(self, start: int):
        for e in self.node.chain.state.epochs.epochs:
            if e.start == start:
                return [(m.name, m.pubkey) for m in e.members]
        return None

    def start(self) -> None:
        """Rebuild the view from the store's (type) index, oldest first, then act on it."""
        store = self.node.store
        found, cursor = [], None
        while True:
            entries, cursor = store.query("type", TYPE, cursor=cursor, limit=1000)
            found.extend(entries)
            if cursor is None:
                break
        by_height: dict[int, list] = {}
        for e in sorted(found, key=lambda e: (e.height, e.index)):
            by_height.setdefault(e.height, []).append(e)
        # every block from the first dealing on is advanced past while a round waits (its windows are in
        # the blocks' agreed time); blocks with no dealing and no waiting round need no reading
        for h in range(min(by_height, default=store.height + 1), store.height + 1):
            if self.view.feeds(h in by_height):
                time = store.get_header(h).timestamp
                for e in by_height.get(h, ()):
                    self._feed(e.height, e.index, e.tx_hash, time)
                self.view.advance(h, time)
        self._install()

    def _feed(self, height: int, index: int, h: bytes, time: int) -> None:
        rec = self.node.store.get_tx(h)
        if rec is None:
            return
        try:
            tx = decode_tx(rec[2], verify=False)
        except Exception:  # committed txs decoded once already; a store that disagrees is not ours to fix
            log.exception("stored oprf.dealing tx does not decode")
            return
        if tx.type == TYPE:
            self.view.add(height, index, tx.member, tx.fields, time, tx.client)

    def on_commit(self, block) -> None:
        try:
            # applied txs of this block only (a duplicate's status is DUPLICATE, its record the first
            # inclusion; a rejected one is not in the index start() reads either)
            height, txs = self.node.chain.last_executed
            assert height == block.height and len(txs) == len(block.tx_hashes), "not the block executed last"
            dealings = [(i, tx.hash) for i, tx in enumerate(txs) if tx.type == TYPE and block.statuses[i] == APPLIED]
            assert all(h == block.tx_hashes[i] for i, h in dealings), "not the block executed last"
            # exactly the blocks start() advances past after a restart: the view's running maximum of block
            # times must not depend on whether this node saw the blocks live or replays them
            if self.view.feeds(bool(dealings)):
                for i, h in dealings:
                    self._feed(block.height, i, h, block.header.timestamp)
                self.view.advance(block.height, block.header.timestamp)
            for (epoch, start), rnd in self.view.rounds.items():
                rec = self.view.current(epoch)
                if block.height == start - 1 and (rec is None or rec.epoch_start < start):
                    log.warning("governance switch at height %d before the key's resharing completed (%d of %d "
                                "dealings qualified so far): the old member set keeps evaluating", block.height,
                                sum(map(rnd.qualified, rnd.dealings)), rnd.needed)
            self._install()
            self._act()
        except Exception:  # the resharing must never stop the node's commit path
            log.exception("OPRF resharing step failed at height %d", block.height)

    # ------------------------------------------------------------------ acting
    def _post(self, key: tuple, fields: dict) -> None:
        if key in self._sent:
            return
        node = self.node
        fields = {k: v for k, v in fields.items() if k != "type"}
        try:
            raw = make_tx(TYPE, node.member_key, chain_id=node.genesis.chain_id, member=node.cfg.name, **fields)
            node.submit([raw], checked=False)
        except Exception as exc:  # a full mempool: the next block retries
            log.warning("could not post %s: %s", key[0], exc)
            return
        self._sent.add(key)
        log.info("OPRF key %s posted", key[0], extra={"fields": {"step": key[0], "round": list(key[1:3])}})

    def _act(self) -> None:
        node, name = self.node, self.node.cfg.name
        keys = node.tokenizer.keys
        for epoch, public in keys.publics.items():
            if self.view.current(epoch) is None and epoch in keys.shares and public.n == len(node.genesis.members):
                self._post(("public", epoch, 1), rs.public_fields(public, 1))
        epochs = node.chain.state.epochs
        latest = epochs.latest
        height = node.store.height
        for epoch, share in list(keys.shares.items()):
            rec = self.view.current(epoch)
            if rec is None or rec.public != share.public or name not in rec.names:
                continue
            # only a member set no later block can rewrite (the chain ignores a dealing for any other)
            if rec.epoch_start < latest.start <= epochs.known_through(height) and latest.names != rec.names:
                self._deal(("reshare", epoch, latest.start), latest.members,
                           lambda share=share: rs.reshare_fields(share, [m.pubkey for m in latest.members], latest.start))
        # dealer-free key generation: only the key epoch genesis asks for (testnets: `radchain testnet
        # --oprf-dkg`) is dealt into by every node by itself; any other needs each member's operator to run
        # `radchain pseudonym dkg` (its dealing is its approval: the key exists only with 2f+1 of them), so
        # one member cannot make every node generate (and switch tokens to) a key of its choosing
        want = node.genesis.params.get("oprf_dkg_epoch")
        if type(want) is int and 0 < want < 1 << 16 and self.view.current(want) is None:
            current = node.chain.epoch_at(height + 1)
            rnd = next((r for (e, _), r in self.view.rounds.items() if e == want), None)
            start = rnd.epoch_start if rnd is not None else current.start
            members = self._members_of(start)
            if members is not None and name in [n for n, _ in members] and (rnd is None or rnd.outcome is None):
                names, keys_ = [n for n, _ in members], [k for _, k in members]
                self._deal(("dkg", want, start), members,
                           lambda: rs.dkg_fields(names.index(name) + 1, want, keys_, start))
        mine = bytes(node.member_key.verify_key)
        for (epoch, start), rnd in self.view.rounds.items():
            if rnd.outcome is not None:
                continue
            contrib = self._contrib((epoch, start))
            if contrib is not None:  # answer complaints against us with the share in clear
                for dealer, complainer in rnd.complaints:
                    if dealer == name and (dealer, complainer) not in rnd.justified:
                        j = rnd.new_names.index(complainer)
                        d = rnd._dealt[name]  # per dealing: a fresh one after an exclusion is answered anew
                        self._post(("justify", epoch, start, complainer, d.height, d.pos),
                                   rs.justify_fields(epoch, start, complainer, contrib.shares[j]))
            # boxes were sealed to the member key this member had in that set: after a rotation they do not
            # open with the new one, and complaining would only make dealers publish our sub-shares
            if name in rnd.new_names and rnd.dealings and dict(rnd.new_members)[name] == mine:
                good, bad = rnd.check_boxes(name, node.member_key)
                for dealer in bad:
                    d = rnd._dealt[dealer]
                    self._post(("complaint", epoch, start, dealer, d.height, d.pos),
                               rs.complaint_fields(epoch, start, dealer))
                # an ack per good dealing: it counts only with a quorum of them (node.ledger.oprf_reshare)
                for dealer in good:
                    d = rnd._dealt[dealer]
                    if self.view.time <= d.time + 2 * rnd.complaint_ms:
                        self._post(("ack", epoch, start, dealer, d.height, d.pos),
                                   rs.ack_fields(epoch, start, dealer))

    async def run(self, tick_s: float = TICK_S) -> None:
        """Windows are counted in blocks, and a quiet chain makes none: while a round this member is part of
        waits for its windows (or for the switch), post an `ack` whenever no block came for `tick_s`."""
        last = -1
        while True:
            await trio.sleep(tick_s)
            height = self.node.store.height
            if height != last:
                last = height
                continue
            try:
                self._act()  # e.g. a genesis that asks for a DKG before any block exists
                for (epoch, start), rnd in list(self.view.rounds.items()):
                    rec = self.view.current(epoch)
                    waiting = rec is None or rec.epoch_start != start
                    recent = rnd.dealings and (height < start or self.view.time <= rnd.dealings[-1].time
                                                + 4 * rnd.complaint_ms)
                    if waiting and recent and self.node.cfg.name in rnd.new_names:
                        self._post(("tick", epoch, start, height),
                                   rs.ack_fields(epoch, start, rnd.dealings[-1].dealer))
                # a new member set this member must deal to, not yet fixed (its dealing would not count):
                # blocks must come until the end of the approval's interval fixes it
                epochs = self.node.chain.state.epochs
                latest, name = epochs.latest, self.node.cfg.name
                for epoch, share in list(self.node.tokenizer.keys.shares.items()):
                    rec = self.view.current(epoch)
                    if rec is not None and rec.public == share.public and name in rec.names \
                            and latest.start > max(rec.epoch_start, epochs.known_through(height)):
                        self._post(("wait", epoch, latest.start, height), rs.ack_fields(epoch, latest.start, name))
            except Exception:
                log.exception("OPRF resharing tick failed")

    def _deal(self, step: tuple[str, int, int], members, make) -> None:
        """Post this member's dealing for round step[1:] until one is on chain and not excluded: what it
        dealt is saved first (to answer complaints after a restart) and re-posted, resealed, if the tx got
        lost (full mempool, a restart before it was proposed): every RETRY_BLOCKS blocks, and at once after
        the chain excluded the previous one (a dealer excluded once may deal again)."""
        kind, epoch, start = step
        key, name = (epoch, start), self.node.cfg.name
        rnd = self.view.rounds.get(key)
        d = rnd._dealt.get(name) if rnd is not None else None
        if d is not None and d.fate is not False:
            return  # on chain, and counting or still in its windows
        if rnd is not None and rnd.outcome is not None:
            return
        if len(members) > rs.MAX_RESHARE_MEMBERS:
            log.error("key epoch %d: %d members, more than a dealing tx can carry (%d)", epoch, len(members),
                      rs.MAX_RESHARE_MEMBERS)
            return
        contrib = self._contrib(key)
        if contrib is None:
            fields, contrib = make()
            self._save_contrib(key, contrib)
        else:
            fields = rs.fields_from_contribution(kind, epoch, start, contrib, [k for *_, k in _pairs(members)])
        attempt = (d.height if d is not None else 0, self.node.store.height // RETRY_BLOCKS)
        self._post((kind, epoch, start, *attempt), fields)

    # what this member dealt in a round still open: kept (0600, next to its share) to answer complaints even
    # after a restart, deleted once the round's parameters are in force
    def _contrib_path(self, key: tuple[int, int]) -> Path:
        return contribution_path(self.node.cfg.home, key)

    def _save_contrib(self, key: tuple[int, int], contrib: oprf.Contribution) -> None:
        save_contribution(self.node.cfg.home, key, contrib)
        self._contribs[key] = contrib

    def _contrib(self, key: tuple[int, int]) -> oprf.Contribution | None:
        c = self._contribs.get(key)
        path = self._contrib_path(key)
        if c is None and path.exists():
            try:
                dealer, comms, shares = msgpack.unpackb(path.read_bytes(), raw=False)
                c = self._contribs[key] = oprf.Contribution(
                    dealer, tuple(comms), tuple(oprf.decode_scalar(x) for x in shares))
            except (ValueError, TypeError, OprfError) as exc:
                log.error("%s: unreadable (%s); this member cannot answer complaints in that round", path, exc)
                return None
        return c

    def _forget_contribs(self, epoch: int, upto_start: int) -> None:
        for key in [k for k in self._contribs if k[0] == epoch and k[1] <= upto_start]:
            del self._contribs[key]
        d = Path(self.node.cfg.home) / KEYS_DIR
        if d.is_dir():
            for path in d.glob(f"dealt-{epoch}-*.secret"):
                try:
                    if int(path.stem.split("-")[2]) <= upto_start:
                        path.unlink()
                except (ValueError, IndexError, OSError):
                    continue

    # ------------------------------------------------------------------ installing
    def _install(self) -> None:
        node = self.node
        for epoch, records in self.view.history.items():
            rec = records[-1]
            if self.installed.get(epoch) == rec:
                continue
            if rec.how in ("genesis", "attested"):
                home = node.tokenizer.keys.publics.get(epoch)
                if home is not None and home != rec.public:
                    log.error("key epoch %d: HOME/keys/oprf holds other public parameters (key id %s) than the "
                              "chain records (key id %s)", epoch, oprf.epoch_key_id(home), oprf.epoch_key_id(rec.public))
                self.installed[epoch] = rec
                self._forget_contribs(epoch, rec.epoch_start)
                continue  # what the homes were dealt: the tokenizer loaded it at start
            name = node.cfg.name
            held = node.tokenizer.keys.shares.get(epoch)
            if held is not None and held.public == rec.public:
                # installed already (before a restart): the share on disk is the one of these parameters.
                # Never derived again: after a member key rotation the boxes no longer open.
                self.installed[epoch] = rec
                self._forget_contribs(epoch, rec.epoch_start)
                continue
            share: KeyShare | None = None
            if name in rec.names:
                rnd = self.view.rounds.get((epoch, rec.epoch_start))
                share = rnd.my_share(name, node.member_key) if rnd is not None else None
                if share is None:
                    # NEVER erase the share we hold for want of the new one: if the chain's choice was wrong
                    # for us (or for everyone), the old shares are what still holds the key
                    log.error("key epoch %d: new parameters in force but this member cannot derive its share "
                              "of them; it keeps the share it holds (not deleted) and does not evaluate", epoch)
                    # stop answering and tokenizing under parameters no longer in force (partials would fail
                    # every proof): memory only, the file stays
                    if self._point(epoch, rec, None):
                        self.installed[epoch] = rec  # derivation is a function of the chain: no use retrying
                    continue
            self._persist(epoch, rec, share)
            if not self._point(epoch, rec, share):
                continue  # retried after the next block
            self.installed[epoch] = rec  # only once on disk and in use (a failure above retries)
            self._forget_contribs(epoch, rec.epoch_start)
            log.info("OPRF key epoch %d: %s member set in force", epoch, rec.how,
                     extra={"fields": {"epoch": epoch, "members": list(rec.names), "t": rec.public.t,
                                       "has_share": share is not None}})

    def _persist(self, epoch: int, rec: RecordedPublic, share: KeyShare | None) -> None:
        """The new share replaces the old on disk before anything answers with it (write, then rename)."""
        d = Path(self.node.cfg.home) / KEYS_DIR
        marker = d / f"epoch-{epoch}.installing"  # tells load_epochs a mismatched pair is an interrupted install
        write_secret(marker, b"")
        if share is not None:
            write_epoch(d.parent.parent, rec.public, share)
        else:
            (d / f"epoch-{epoch}.share").unlink(missing_ok=True)  # a member outside the set erases its share
            write_epoch(d.parent.parent, rec.public, None)
        marker.unlink()

    def _point(self, epoch: int, rec: RecordedPublic, share: KeyShare | None) -> bool:
        node = self.node
        peers = {}
        epoch_members = {m.name: m.peer_id for e in node.chain.state.epochs.epochs for m in e.members}
        for i, n in enumerate(rec.names, 1):
            if n != node.cfg.name and epoch_members.get(n):
                peers[epoch_members[n]] = i
        try:
            node.tokenizer.set_epoch(rec.public, share, peers)
        except OprfError as exc:
            log.error("key epoch %d: cannot install: %s", epoch, exc)
            return False
        if share is None:
            node.oprf_service.shares.pop(epoch, None)
        else:
            node.oprf_service.shares[epoch] = share
        return True


def contribution_path(home: Path, key: tuple[int, int]) -> Path:
    """Where a member keeps what it dealt in round (key epoch, governance epoch start) until it is in force."""
    return Path(home) / KEYS_DIR / f"dealt-{key[0]}-{key[1]}.secret"


def save_contribution(home: Path, key: tuple[int, int], contrib: oprf.Contribution) -> None:
    write_secret(contribution_path(home, key), msgpack.packb(
        [contrib.dealer, list(contrib.commitments), [oprf.encode_scalar(x) for x in contrib.shares]],
        use_bin_type=True))


def _pairs(members) -> list[tuple[str, bytes]]:
    return [(m.name, m.pubkey) if hasattr(m, "pubkey") else tuple(m) for m in members]

