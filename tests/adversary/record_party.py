"""Run a pibench party while recording everything its process sees: a semi-honest party's view.

    python record_party.py TRANSCRIPT INJECT python -m pibench.cli party --role ROLE ...

(the launcher's command prefix for a party). Recorded, and saved to TRANSCRIPT when the
party exits:
- "seen": every tensor that arrives from a peer over torch.distributed (point to point or
  through a collective; a collective's buffer is recorded after the call, so whatever the
  party holds afterwards is in it), and every share pibench receives over SPU's link (raw
  bytes; SPU's own protocol messages stay inside libspu);
- "drawn": every random ring tensor this process draws (torch.randint: CrypTen's own
  randomness; `Prg.ring`: the key streams);
- "keys": the key of every key stream this process builds;
- "input": the client's encoded input; "revealed": the logits the client opens (ring units);
- "fss" (crypten:fss): for every ReLU layer's key the party takes, the key (the int64 words
  of `ReluKey.to_words`, with "count" and "bits"), its share of the mask r ("r") and how many
  tensors it had received by then ("seen": the layer's opened x + r is the first one of its
  size after that).
The party runs unchanged unless INJECT names a known bug to put back (positive controls
that show the adversary tests catch what they claim):
    reduce_reveal            open the logits with CrypTen's reveal(dst=client), a gloo reduce
    counter_reset            draw the weight masks from a fresh copy of the server's key stream
    key_in_clear             the dealer sends each party its key-stream key in the clear
    fixed_stream_keys        each party's key-stream key is a constant of its rank, not agreed by X25519
    mask_reuse               crypten:fss: every ReLU layer masks x with the same r (its keys stay fresh)
    mask_reuse_in_inference  crypten:fss: every ReLU layer of an inference masks x with (a prefix of) one r,
                             drawn afresh for each inference
    shared_root_seed         crypten:fss: both parties' DCF keys grow from one root seed
    server_keys_to_client    crypten:fss: the dealer sends the client the server's FSS keys too
crypten:gc (see _record_gc) also records "gc": the server's free-XOR offsets, the server's share entering
each ReLU layer and the client's OT choice bits (as tensors), and knows these bugs:
    gc_fixed_seed   every circuit garbled from one fixed seed: Delta and the server's labels repeat
    gc_delta_reuse  one Delta for every layer and inference (labels stay fresh)
    ot_choices_clear  the client sends its OT choice bits in the clear next to U
"""

import atexit
import sys

import torch
import torch.distributed as dist

transcript = {"seen": [], "drawn": [], "keys": [], "input": [], "revealed": [], "fss": [],
              "gc": {"deltas": [], "server_shares": [], "choices": []}}
INJECT = sys.argv[2]
ROLE = sys.argv[sys.argv.index("--role") + 1] if "--role" in sys.argv else ""


class _Pending:
    """An asynchronous receive: its tensor is recorded once the peer's data is in."""

    def __init__(self, work, tensor):
        self.work, self.tensor = work, tensor

    def wait(self, *args, **kwargs):
        result = self.work.wait(*args, **kwargs)
        transcript["seen"].append(self.tensor.clone())
        return result

    def __getattr__(self, name):
        return getattr(self.work, name)


def _receiving(fn):
    def wrapper(*args, **kwargs):
        tensor = args[0] if args else kwargs.get("tensor")
        work = fn(*args, **kwargs)
        if kwargs.get("async_op") or fn.__name__ == "irecv":
            return _Pending(work, tensor)
        transcript["seen"].append(tensor.clone())
        return work

    return wrapper


for name in ("recv", "irecv", "broadcast", "all_reduce", "reduce"):
    setattr(dist, name, _receiving(getattr(dist, name)))

_randint = torch.randint


def _recorded_randint(*args, **kwargs):
    out = _randint(*args, **kwargs)
    transcript["drawn"].append(out.clone())
    return out


torch.randint = _recorded_randint


def _record_crypten() -> None:
    from pibench.mpc.crypten import backend as crypten_backend
    from pibench.mpc.crypten import dealer, keys, preprocessing
    from pibench.mpc.crypten.preprocessing import Prg
    from pibench.mpc.fss import dcf
    from pibench.mpc.fss import relu as relu_gate

    ring, init = Prg.ring, Prg.__init__

    def recorded_ring(self, size):
        out = ring(self, size)
        transcript["drawn"].append(out.clone())
        return out

    def recorded_init(self, key):
        init(self, key)
        transcript["keys"].append(bytes(key))

    Prg.ring, Prg.__init__ = recorded_ring, recorded_init
    backend = crypten_backend.CryptenBackend
    share_input, reveal = backend.share_input, backend.reveal_to_client

    def recorded_share_input(self, x, shape):
        if x is not None:
            transcript["input"].append((x.float() * 2**16).long())  # as CrypTen's FixedPointEncoder encodes
        return share_input(self, x, shape)

    def reduce_reveal(self, y):
        ring_values = y._tensor.reveal(dst=0)
        return crypten_backend.decode_ring(ring_values, y.encoder.scale) if self.rank == 0 else None

    def recorded_reveal(self, y):
        out = (reduce_reveal if INJECT == "reduce_reveal" else reveal)(self, y)
        if out is not None:
            transcript["revealed"].append(torch.round(out * 2**16).long())
        return out

    backend.share_input, backend.reveal_to_client = recorded_share_input, recorded_reveal
    relu_key = preprocessing.PreprocessedProvider.relu_key  # crypten:fss takes every ReLU layer's key through it

    def recorded_relu_key(self, *args, **kwargs):
        r, key = relu_key(self, *args, **kwargs)
        transcript["fss"].append({"count": key.count, "bits": key.bits, "key": torch.from_numpy(key.to_words().copy()),
                                  "r": r.reshape(-1).clone(), "seen": len(transcript["seen"])})
        return r, key

    preprocessing.PreprocessedProvider.relu_key = recorded_relu_key
    if INJECT == "counter_reset":
        dealer.weight_masks = lambda stream, shapes: [Prg(stream.key).ring(s) for s in shapes]
    if INJECT == "key_in_clear":
        import secrets

        from pibench.mpc.parties.channel import recv_tensor, send_tensor

        def key_in_clear(peer, group, rank, *, first):
            if first:  # the dealer
                key = secrets.token_bytes(keys.KEY_BYTES)
                send_tensor(torch.frombuffer(bytearray(key), dtype=torch.long).clone(), peer, group)
                return key
            return recv_tensor(peer, group)[0].numpy().tobytes()

        dealer.agree_key = key_in_clear
    if INJECT == "mask_reuse":
        draws = dealer.party_draws  # the parties' and the dealer's draws all go through it

        def reused_relu_mask(request, prg, rank):
            fresh = draws(request, prg, rank)  # the stream still advances as usual
            if request.kind != "relu":
                return fresh
            return [Prg(prg.key).ring(request.sizes[0])]  # but r is always the stream's first block

        dealer.party_draws = reused_relu_mask
    if INJECT == "mask_reuse_in_inference":
        draws = dealer.party_draws

        def reused_within_inference(request, prg, rank):
            fresh = draws(request, prg, rank)  # the stream still advances as usual
            if request.kind != "relu":
                return fresh
            # The ReLU layers of the models this is used with shrink, so a layer no smaller than the last
            # starts an inference: its r is kept, and every later layer of the inference takes a prefix of it.
            n = request.sizes[0][0]
            if n >= getattr(prg, "last_relu", 0):
                prg.inference_r = fresh[0]
            prg.last_relu = n
            return [prg.inference_r[:n]]

        dealer.party_draws = reused_within_inference
    if INJECT == "shared_root_seed":
        draw = dcf.random_seeds  # DCF key generation draws 2N root seeds at once: party 0's, then party 1's

        def shared_root_seed(n, stream=None):
            seeds = draw(n, stream)
            seeds[n // 2:] = seeds[:n // 2]
            return seeds

        dcf.random_seeds = shared_root_seed
    if INJECT == "server_keys_to_client":
        keys_of = dealer.relu_keys

        def server_keys_to_client(request, prgs):
            client_words, server_words = keys_of(request, prgs)
            return torch.cat([client_words, server_words]), server_words

        dealer.relu_keys = server_keys_to_client
        if ROLE == "client":  # it takes its own key from the front of a part twice as long, and keeps the rest
            output_size, from_words = preprocessing.Request.output_size, relu_gate.ReluKey.from_words.__func__

            def with_server_key(self):
                size = output_size(self)
                return (2 * size[0],) if self.kind == "relu" else size

            def own_key(cls, words, count, bits=relu_gate.DEFAULT_BITS):
                return from_words(cls, words[:cls.words(count, bits)], count, bits)

            preprocessing.Request.output_size = with_server_key
            relu_gate.ReluKey.from_words = classmethod(own_key)
    if INJECT == "fixed_stream_keys":
        import hashlib

        def fixed_key(peer, group, rank, *, first):
            return hashlib.sha256(b"pibench fixed key of rank %d" % rank).digest()

        dealer.agree_key = fixed_key


# -- crypten:gc ------------------------------------------------------------------------------------
def _record_gc() -> None:
    import numpy as np

    from pibench.mpc.crypten import gc_backend
    from pibench.mpc.gc import iknp, labels
    from pibench.mpc.gc import relu as gc_relu

    backend = gc_backend.GcBackend
    share_input, relu_shares = backend.share_input, backend.relu_shares

    def recorded_share_input(self, x, shape):
        if x is not None:
            transcript["input"].append((x.float() * 2**16).long())
        return share_input(self, x, shape)

    def recorded_relu_shares(self, share):
        if self.rank == 1:
            transcript["gc"]["server_shares"].append(torch.from_numpy(share.view(np.int64).copy()))
        return relu_shares(self, share)

    backend.share_input, backend.relu_shares = recorded_share_input, recorded_relu_shares
    random_delta = labels.random_delta
    if INJECT == "gc_fixed_seed":
        def fixed_labels(shape):
            return np.random.default_rng(0).integers(0, 2**64, shape, dtype=np.uint64)

        gc_relu.random_labels = fixed_labels
        labels.random_delta = lambda: fixed_labels((2,)) | np.array([1, 0], dtype=np.uint64)
    if INJECT == "gc_delta_reuse":
        first = random_delta()
        labels.random_delta = lambda: first.copy()
    drawn = labels.random_delta

    def recorded_delta():
        delta = drawn()
        transcript["gc"]["deltas"].append(torch.from_numpy(delta.view(np.int64).copy()))
        return delta

    labels.random_delta = recorded_delta
    extend = iknp.Receiver.extend

    def recorded_extend(self, choices):
        transcript["gc"]["choices"].append(torch.from_numpy(np.asarray(choices, dtype=np.uint8).copy()))
        u, pending = extend(self, choices)
        if INJECT == "ot_choices_clear":  # one more row: the packed choices
            clear = np.zeros((1, u.shape[1]), np.uint8)
            clear[0, :] = np.packbits(pending.choices, bitorder="little")
            u = np.concatenate([u, clear])
        return u, pending

    iknp.Receiver.extend = recorded_extend
    if INJECT == "ot_choices_clear":
        send = iknp.Sender.extend
        iknp.Sender.extend = lambda self, u, count, delta: send(self, u[:iknp.KAPPA], count, delta)


def _record_spu() -> None:
    from pibench.mpc.spu import backend as spu_backend
    from pibench.mpc.spu import link as spu_link

    reveal = spu_backend.SpuBackend.reveal_to_client

    def recorded_reveal(self, name):
        out = reveal(self, name)
        if out is not None:
            transcript["revealed"].append(torch.round(out.double() * 2**18).long())  # SPU's 18 fractional bits
        return out

    spu_backend.SpuBackend.reveal_to_client = recorded_reveal

    unpack = spu_link._unpack  # every share that arrives over SPU's link passes through it

    def recorded_unpack(data):
        transcript["seen"].append(bytes(data))
        return unpack(data)

    spu_link._unpack = recorded_unpack


if __name__ == "__main__":
    argv = sys.argv[3:]
    party_args = argv[argv.index("pibench.cli") + 1:]
    protocol = party_args[party_args.index("--protocol") + 1]
    (_record_spu if protocol.startswith("spu:") else _record_crypten)()
    if protocol == "crypten:gc":
        _record_gc()
    atexit.register(lambda: torch.save(transcript, sys.argv[1]))
    from pibench.cli import main

    sys.exit(main(party_args))
