"""Probes how torch's CPU reductions depend on the intra-op thread count (docs/threads.md).

Run with mergekit 0.1.5's interpreter:  ~/mk/bin/python tests/threads/probe.py
Each hypothesis is checked by building the T-thread result from 1-thread torch pieces, so no
amalgam code is involved. Prints one line per hypothesis with its hit count.
"""

import math

import torch

GRAIN = 32768
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
LENGTHS = [32767, 32768, 32769, 40944, 65536, 65537, 70000, 98304, 98305, 131072, 131073, 200003]
THREADS = [2, 3, 4, 5, 8]


def values(gen, shape, dt):
    x = torch.randn(shape, generator=gen) * torch.pow(2.0, torch.randint(-6, 7, shape, generator=gen).float())
    return x.to(dt)


def with_threads(t, f):
    old = torch.get_num_threads()
    torch.set_num_threads(t)
    try:
        return f()
    finally:
        torch.set_num_threads(old)


def two_pass(x, t, part):
    """PyTorch's two-pass reduction: min(t, ceil(n/GRAIN)) chunks of ceil(n/chunks) elements, each
    reduced by `part` (1 thread) into a slot of a t-long buffer of the output dtype (unused slots
    0), the buffer then summed (1 thread)."""
    n = x.numel()
    if n < GRAIN or t == 1:
        return with_threads(1, lambda: part(x))
    nt = min(t, math.ceil(n / GRAIN))
    chunk = math.ceil(n / nt)
    slots = [with_threads(1, lambda: part(x[i * chunk:(i + 1) * chunk])) for i in range(nt) if i * chunk < n]
    buf = torch.zeros(t, dtype=slots[0].dtype)
    for i, s in enumerate(slots):
        buf[i] = s
    return with_threads(1, lambda: buf.sum())


def halves_rule(x, t, part):
    """The issue's statement: sum(first ceil(n/T)) + sum(rest), in the output dtype."""
    n = x.numel()
    if n <= GRAIN:
        return with_threads(1, lambda: part(x))
    c = math.ceil(n / t)
    a = with_threads(1, lambda: part(x[:c]))
    b = with_threads(1, lambda: part(x[c:]))
    return a + b


def same(a, b):
    return torch.equal(a.reshape(-1).view(torch.uint8) if a.dtype != torch.bool else a, b.reshape(-1).view(torch.uint8))


def bits_eq(a, b):
    a = a.reshape(-1).contiguous()
    b = b.reshape(-1).contiguous()
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def report(name, hits, total, fails):
    print(f"{name}: {hits}/{total}" + (f"  first failures: {fails[:4]}" if fails else ""))


def main():
    gen = torch.Generator().manual_seed(10)
    # 1. full sums (x.sum(), x.abs().sum(), (a*b).sum(), x.sum(dim=-1) of a 1-D tensor, mean)
    ops = {
        "sum": lambda x: x.sum(),
        "abs_sum": lambda x: x.abs().sum(),
        "sum_dim_last": lambda x: x.sum(dim=-1),
        "mean": lambda x: x.mean(),
    }
    for opname, op in ops.items():
        h_tp = h_half = tot = differs = 0
        fails = []
        for dname, dt in DTYPES.items():
            for n in LENGTHS:
                x = values(gen, (n,), dt)
                one = with_threads(1, lambda: op(x))
                for t in THREADS:
                    got = with_threads(t, lambda: op(x))
                    tot += 1
                    differs += not bits_eq(got, one)
                    if opname == "mean":
                        emu = (two_pass(x, t, lambda y: y.sum()) / n).to(dt)
                    else:
                        emu = two_pass(x, t, op)
                    if bits_eq(got, emu):
                        h_tp += 1
                    else:
                        fails.append((dname, n, t, got.item(), emu.item()))
                    if t == 2 and opname != "mean":
                        h_half += bits_eq(got, halves_rule(x, t, op))
        report(f"{opname}: two-pass rule", h_tp, tot, fails)
        print(f"   ({differs}/{tot} differ from 1 thread)")
    # dot as (a*b).sum()
    h = tot = 0
    fails = []
    for dname, dt in DTYPES.items():
        for n in LENGTHS:
            a, b = values(gen, (n,), dt), values(gen, (n,), dt)
            for t in THREADS:
                got = with_threads(t, lambda: (a * b).sum())
                emu = two_pass(a * b, t, lambda y: y.sum())
                tot += 1
                if bits_eq(got, emu):
                    h += 1
                else:
                    fails.append((dname, n, t))
    report("(a*b).sum(): two-pass rule", h, tot, fails)

    # 2. norms: does vector_norm split?
    for dname, dt in DTYPES.items():
        same_cnt = tot = 0
        for n in LENGTHS:
            x = values(gen, (n,), dt)
            one = with_threads(1, lambda: torch.linalg.vector_norm(x))
            for t in THREADS:
                tot += 1
                same_cnt += bits_eq(with_threads(t, lambda: torch.linalg.vector_norm(x)), one)
                same_cnt_norm = bits_eq(with_threads(t, lambda: x.norm()), one)
                if not same_cnt_norm:
                    pass
        print(f"vector_norm {dname}: equal to 1 thread in {same_cnt}/{tot}")
    # 2b. per-row norms / sums over the last axis (many outputs): thread-invariant?
    for dname, dt in DTYPES.items():
        inv = tot = 0
        for shape in [(3, 40000), (2, 70000), (64, 704), (704, 64), (5, 13107)]:
            x = values(gen, shape, dt)
            for op in [lambda: torch.norm(x, dim=-1), lambda: x.sum(dim=-1), lambda: x.sum(dim=0),
                       lambda: torch.softmax(x, dim=-1), lambda: x.reshape(x.shape[0], -1).square().mean(dim=1),
                       lambda: x.abs().max()]:
                one = with_threads(1, op)
                for t in THREADS:
                    tot += 1
                    inv += bits_eq(with_threads(t, op), one)
        print(f"dim reductions (norm/sum dim=-1, sum dim=0, softmax, mean dim=1, max) {dname}: invariant {inv}/{tot}")
    # 3. torch.dot (f32): differs with threads?
    diff = tot = 0
    for n in [4096, 8191, 8192, 8193, 16384, 40000, 70000, 200003]:
        a, b = values(gen, (n,), torch.float32), values(gen, (n,), torch.float32)
        one = with_threads(1, lambda: torch.dot(a, b))
        for t in THREADS:
            tot += 1
            diff += not bits_eq(with_threads(t, lambda: torch.dot(a, b)), one)
    print(f"torch.dot f32: differs from 1 thread in {diff}/{tot}")


if __name__ == "__main__":
    main()
