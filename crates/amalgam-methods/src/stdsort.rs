//! PyTorch's CPU sort, reproduced step for step.
//!
//! `torch.sort`/`torch.argsort` on CPU (with the default `stable=False`) hand `(key, index)` pairs
//! to libstdc++'s `std::sort`, comparing keys only. `std::sort` is an unstable introsort, so
//! among equal keys (very common for bf16 magnitudes) the order of indices is whatever introsort
//! leaves behind. Which elements a magnitude sparsifier keeps at the cut-off depends on that order,
//! so to be bit-exact we must run the very same algorithm: the same pivot choice (median of
//! `first+1`, middle, `last-1` moved to `first`), the same unguarded Hoare partition, the same
//! insertion-sort threshold (16), and the same heapsort fallback once the recursion depth reaches
//! `2·⌊log2 n⌋`. Any "equivalent" sort would give a different permutation.
//!
//! The comparators are PyTorch's `KeyValueCompAsc`/`KeyValueCompDesc`, which order NaN as larger
//! than every number.

/// Insertion-sort threshold of libstdc++ (`_S_threshold`).
const THRESHOLD: usize = 16;

/// A key with the position it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keyed {
    /// Sort key (PyTorch compares `float` keys; bf16/f16 keys widen to f32 exactly).
    pub key: f32,
    /// Original flat position.
    pub index: u32,
}

/// PyTorch's ascending comparator: NaN sorts after every number.
#[inline(always)]
pub fn less_asc(a: f32, b: f32) -> bool {
    (!a.is_nan() && b.is_nan()) || a < b
}

/// PyTorch's descending comparator: NaN sorts before every number.
#[inline(always)]
pub fn less_desc(a: f32, b: f32) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

/// `std::sort(v.begin(), v.end(), comp)` as libstdc++ implements it, on keys only.
pub fn std_sort<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, depth, comp);
    final_insertion_sort(v, comp);
}

/// `(key, position)` pairs, as PyTorch's sort copies them before sorting. Positions are `u32`
/// like PyTorch's CPU sort indices for these sizes; callers with more than `u32::MAX` elements
/// must refuse first (see `sparsify`).
fn keyed(keys: impl IntoIterator<Item = f32>) -> Vec<Keyed> {
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| Keyed {
            key,
            index: i as u32,
        })
        .collect()
}

/// The argsort of `keys` as `torch.argsort(keys, descending=...)` returns it on CPU.
pub fn argsort(keys: &[f32], descending: bool) -> Vec<u32> {
    argsort_keys(keys.iter().copied(), descending)
}

/// [`argsort`] of keys computed on the fly (e.g. magnitudes), without materialising them first.
pub fn argsort_keys(keys: impl IntoIterator<Item = f32>, descending: bool) -> Vec<u32> {
    let mut v = keyed(keys);
    if descending {
        std_sort(&mut v, less_desc);
    } else {
        std_sort(&mut v, less_asc);
    }
    v.into_iter().map(|k| k.index).collect()
}

/// The sets [`argsort_keys`] puts before each of `bounds` (sorted positions), without sorting
/// what cannot change them: the returned `(key, index)` pairs hold, for every `b` in `bounds`,
/// exactly the elements the full sort puts at positions `< b` in positions `< b` (and the ones
/// it puts at `>= b` at `>= b`); the order inside each side is unspecified.
///
/// Why this is exact: introsort partitions fix which elements a sub-range holds, and the rest of
/// the algorithm only permutes inside it (recursion, the heapsort fallback, and the final
/// insertion sort, which never moves an element past an equal one, so never across a partition
/// boundary). A sub-range that does not straddle a bound changes no set, so only the sub-ranges
/// containing a bound are followed, with the same depth budget as the full sort; a straddling
/// leaf is insertion-sorted on its own, which gives the same order as the final pass (a stable
/// insertion sort). Expected linear time instead of n·log n. Checked against the full replay by
/// the tests below.
pub fn select_keys(
    keys: impl IntoIterator<Item = f32>,
    descending: bool,
    bounds: &[usize],
) -> Vec<Keyed> {
    let mut v = keyed(keys);
    select_keyed(&mut v, descending, bounds);
    v
}

/// [`select_keys`] on `(key, index)` pairs built by the caller (index `i` at position `i`, as
/// PyTorch's sort copies them), in place.
pub fn select_keyed(v: &mut [Keyed], descending: bool, bounds: &[usize]) {
    let n = v.len();
    if n >= 2 {
        let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
        // Without NaN keys PyTorch's comparators are plain `>` and `<`: the same decisions,
        // without the NaN tests in the partition loops.
        let nan = has_nan(v);
        let follow = |start, end| straddles(start, end, bounds);
        match (descending, nan) {
            (true, true) => introsort_select(v, 0, depth, less_desc, &follow),
            (true, false) => introsort_select(v, 0, depth, gt_plain, &follow),
            (false, true) => introsort_select(v, 0, depth, less_asc, &follow),
            (false, false) => introsort_select(v, 0, depth, lt_plain, &follow),
        }
    }
}

/// [`less_asc`] for keys known not to be NaN.
#[inline(always)]
fn lt_plain(a: f32, b: f32) -> bool {
    a < b
}

/// [`less_desc`] for keys known not to be NaN.
#[inline(always)]
fn gt_plain(a: f32, b: f32) -> bool {
    a > b
}

/// Whether any key is NaN (a fold without early exit, which vectorises).
fn has_nan(v: &[Keyed]) -> bool {
    v.iter().fold(false, |a, k| a | k.key.is_nan())
}

/// [`std_sort`] with PyTorch's ascending comparator ([`less_asc`]), taking the NaN-free
/// comparator when no key is NaN (the same order, faster).
pub fn std_sort_asc(v: &mut [Keyed]) {
    if has_nan(v) {
        std_sort(v, less_asc);
    } else {
        std_sort(v, lt_plain);
    }
}

/// [`std_sort_asc`]'s result at the sorted positions inside `spans` (half-open, sorted by start,
/// disjoint), without sorting the rest: afterwards `v[p]` is what the full sort puts at `p` for
/// every `p` in a span, and what lies outside the spans is in unspecified order.
///
/// Why this is exact: the argument of [`select_keys`], with a bound at every position of every
/// span. A sub-range holds exactly the elements the full sort puts there, so one that meets no
/// span cannot change what lands inside one; every sub-range that meets a span is followed as
/// the full sort would (same partitions, same depth budget, same heapsort fallback), and its
/// leaf is insertion-sorted on its own, which is what the final pass does to it. DELLA uses it
/// for the few groups of equal magnitudes whose order decides a draw.
pub fn std_sort_asc_within(v: &mut [Keyed], spans: &[(usize, usize)]) {
    let n = v.len();
    if n < 2 || spans.is_empty() {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    // The first span ending after `start` is the only one that can meet `[start, end)` first.
    let meets = |start: usize, end: usize| {
        let i = spans.partition_point(|&(_, hi)| hi <= start);
        spans.get(i).is_some_and(|&(lo, _)| lo < end)
    };
    if has_nan(v) {
        introsort_select(v, 0, depth, less_asc, &meets);
    } else {
        introsort_select(v, 0, depth, lt_plain, &meets);
    }
}

/// Whether `[start, end)` holds a bound strictly inside (a sub-range whose sets can change).
fn straddles(start: usize, end: usize, bounds: &[usize]) -> bool {
    bounds.iter().any(|&b| start < b && b < end)
}

/// The introsort loop restricted to the sub-ranges `[at, at + len)` for which `follow` holds
/// (it must hold for every sub-range containing one that it holds for).
fn introsort_select<F, P>(v: &mut [Keyed], at: usize, mut depth: usize, comp: F, follow: &P)
where
    F: Fn(f32, f32) -> bool + Copy,
    P: Fn(usize, usize) -> bool,
{
    let mut len = v.len();
    while len > THRESHOLD {
        if !follow(at, at + len) {
            return;
        }
        let part = &mut v[..len];
        if depth == 0 {
            heap_sort(part, comp);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(part, comp);
        introsort_select(&mut part[cut..], at + cut, depth, comp, follow);
        len = cut;
    }
    if len >= 2 && follow(at, at + len) {
        insertion_sort(&mut v[..len], comp);
    }
}

/// `torch.topk(keys, k, largest=True)` indices on CPU (a 1-D tensor), in the order returned.
///
/// PyTorch's CPU top-k copies `(key, index)` pairs and, when `64·k <= n`, runs
/// `std::partial_sort` on the first `k`; otherwise `std::nth_element` at `k − 1` followed by
/// `std::sort` of the first `k − 1` (the k-th stays where `nth_element` put it). Which of several
/// equal keys make the cut is decided by those algorithms, so they are replayed here.
pub fn topk_largest(keys: &[f32], k: usize) -> Vec<u32> {
    let n = keys.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let mut v = keyed(keys.iter().copied());
    if k.saturating_mul(64) <= n {
        heap_select(&mut v, k, less_desc);
        heap_sort_prefix(&mut v[..k], less_desc);
    } else {
        nth_element(&mut v, k - 1, less_desc);
        std_sort(&mut v[..k - 1], less_desc);
    }
    v.truncate(k);
    v.into_iter().map(|x| x.index).collect()
}

/// The set of [`topk_largest`]'s indices (in unspecified order), without the sort that follows
/// the selection: `std::partial_sort`'s heap sort and the `std::sort` after `std::nth_element`
/// only permute the first `k` entries among themselves, so the selection alone fixes the set.
/// Takes the keys by value so that they are freed before the `(key, index)` pairs are built.
pub fn topk_largest_set(keys: Vec<f32>, k: usize) -> Vec<u32> {
    let mut v = keyed(keys);
    topk_largest_select(&mut v, k)
        .iter()
        .map(|x| x.index)
        .collect()
}

/// [`topk_largest_set`] on `(key, index)` pairs the caller built (e.g. straight from a blocked
/// computation of the keys, without a separate key buffer): selects in place and returns the
/// first `min(k, len)` pairs, the kept set in unspecified order.
pub fn topk_largest_select(v: &mut [Keyed], k: usize) -> &[Keyed] {
    let n = v.len();
    let k = k.min(n);
    if k == 0 {
        return &[];
    }
    let nan = has_nan(v);
    match (k.saturating_mul(64) <= n, nan) {
        (true, true) => heap_select(v, k, less_desc),
        (true, false) => heap_select(v, k, gt_plain),
        (false, true) => nth_element(v, k - 1, less_desc),
        (false, false) => nth_element(v, k - 1, gt_plain),
    }
    &v[..k]
}

/// libstdc++ `std::nth_element` (introselect).
fn nth_element<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], nth: usize, comp: F) {
    let n = v.len();
    if n == 0 || nth >= n {
        return;
    }
    let mut depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    let (mut first, mut last) = (0usize, n);
    while last - first > 3 {
        let part = &mut v[first..last];
        if depth == 0 {
            heap_select(part, nth - first + 1, comp);
            part.swap(0, nth - first);
            return;
        }
        depth -= 1;
        let cut = first + partition_pivot(part, comp);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(&mut v[first..last], comp);
}

/// libstdc++ `std::__heap_select(first, first + middle, last)`.
fn heap_select<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], middle: usize, comp: F) {
    make_heap(&mut v[..middle], comp);
    for i in middle..v.len() {
        if comp(v[i].key, v[0].key) {
            let val = v[i];
            v[i] = v[0];
            adjust_heap(&mut v[..middle], 0, middle, val, comp);
        }
    }
}

fn make_heap<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    let len = v.len();
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let val = v[parent];
        adjust_heap(v, parent, len, val, comp);
        if parent == 0 {
            break;
        }
        parent -= 1;
    }
}

/// libstdc++ `std::__sort_heap` on a slice that already is a heap.
fn heap_sort_prefix<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    let mut last = v.len();
    while last > 1 {
        last -= 1;
        let val = v[last];
        v[last] = v[0];
        adjust_heap(v, 0, last, val, comp);
    }
}

fn introsort_loop<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], mut depth: usize, comp: F) {
    // `v` shrinks from the right as libstdc++'s `__last = __cut` does; recursion handles the
    // right part, exactly as in the original (the recursion order affects nothing observable,
    // but we keep it anyway).
    let mut len = v.len();
    while len > THRESHOLD {
        let part = &mut v[..len];
        if depth == 0 {
            heap_sort(part, comp);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(part, comp);
        introsort_loop(&mut part[cut..], depth, comp);
        len = cut;
    }
}

fn partition_pivot<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) -> usize {
    let n = v.len();
    let mid = n / 2;
    move_median_to_first(v, 0, 1, mid, n - 1, comp);
    unguarded_partition(v, 1, n, 0, comp)
}

fn move_median_to_first<F: Fn(f32, f32) -> bool>(
    v: &mut [Keyed],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    comp: F,
) {
    let (ka, kb, kc) = (v[a].key, v[b].key, v[c].key);
    let pick = if comp(ka, kb) {
        if comp(kb, kc) {
            b
        } else if comp(ka, kc) {
            c
        } else {
            a
        }
    } else if comp(ka, kc) {
        a
    } else if comp(kb, kc) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

/// Hoare partition without bounds checks in the original: the median-of-3 pivot at `pivot`
/// guarantees both scans stop inside the range. Our indices stay in bounds for the same reason;
/// slice indexing would only panic if that invariant were broken.
///
/// The swaps are found 64 elements at a time ([`block_swaps`]) while the unscanned middle is
/// large, then the scan finishes element by element from the state those swaps left.
fn unguarded_partition<F: Fn(f32, f32) -> bool + Copy>(
    v: &mut [Keyed],
    first: usize,
    last: usize,
    pivot: usize,
    comp: F,
) -> usize {
    let p = v[pivot].key;
    let (first, last) = block_swaps(v, first, last, p, comp);
    scan_partition(v, first, last, p, comp)
}

/// Elements per block of [`block_swaps`].
const SCAN_BLOCK: usize = 64;

/// The swaps of [`unguarded_partition`]'s scans, decided 64 comparisons at a time instead of
/// one data-dependent branch per element; returns the scan state `(first, last)` after them.
///
/// Why this is the same partition: until the two scans meet, each swap exchanges the next
/// element, from the left, that stops the left scan (`!comp(x, p)`) with the next one, from the
/// right, that stops the right scan (`!comp(p, x)`), and every element the scans look at still
/// holds its original value (swaps only write where the scans have been). So the j-th swap pairs
/// the j-th left stopper with the j-th right stopper, as long as the left one lies before the
/// right one. Both are read from bit masks of a left and a right block of 64 that never
/// overlap; when the next block would reach the other side's, the remaining middle (fewer than
/// three blocks) is left to the element-by-element scan, from the state after the last swap
/// (`first` just after its left position, `last` at its right one), exactly as the scan would
/// have continued.
fn block_swaps<F: Fn(f32, f32) -> bool + Copy>(
    v: &mut [Keyed],
    mut first: usize,
    mut last: usize,
    p: f32,
    comp: F,
) -> (usize, usize) {
    const B: usize = SCAN_BLOCK;
    if last < first + 3 * B || last > v.len() {
        return (first, last);
    }
    // Left block [lb, lb + B), right block [rb − B, rb); bit i of `rm` is position rb − 1 − i.
    let (mut lb, mut rb) = (first, last);
    let left_stops = |v: &[Keyed], lb: usize| -> u64 {
        let mut m = 0u64;
        for (i, k) in v[lb..lb + B].iter().enumerate() {
            m |= (!comp(k.key, p) as u64) << i;
        }
        m
    };
    let right_stops = |v: &[Keyed], rb: usize| -> u64 {
        let mut m = 0u64;
        for (i, k) in v[rb - B..rb].iter().rev().enumerate() {
            m |= (!comp(p, k.key) as u64) << i;
        }
        m
    };
    let mut lm = left_stops(v, lb);
    let mut rm = right_stops(v, rb);
    loop {
        if lm == 0 {
            if lb + 3 * B > rb {
                break;
            }
            lb += B;
            lm = left_stops(v, lb);
            continue;
        }
        if rm == 0 {
            if lb + 3 * B > rb {
                break;
            }
            rb -= B;
            rm = right_stops(v, rb);
            continue;
        }
        let f = lb + lm.trailing_zeros() as usize;
        let r = rb - 1 - rm.trailing_zeros() as usize;
        lm &= lm - 1;
        rm &= rm - 1;
        v.swap(f, r);
        first = f + 1;
        last = r;
    }
    (first, last)
}

/// The element-by-element Hoare scan of [`unguarded_partition`] from state `(first, last)`.
fn scan_partition<F: Fn(f32, f32) -> bool>(
    v: &mut [Keyed],
    mut first: usize,
    mut last: usize,
    p: f32,
    comp: F,
) -> usize {
    loop {
        while comp(v[first].key, p) {
            first += 1;
        }
        last -= 1;
        while comp(p, v[last].key) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn final_insertion_sort<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    if v.len() > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD], comp);
        for i in THRESHOLD..v.len() {
            unguarded_linear_insert(v, i, comp);
        }
    } else {
        insertion_sort(v, comp);
    }
}

fn insertion_sort<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    for i in 1..v.len() {
        if comp(v[i].key, v[0].key) {
            let val = v[i];
            v.copy_within(0..i, 1);
            v[0] = val;
        } else {
            unguarded_linear_insert(v, i, comp);
        }
    }
}

fn unguarded_linear_insert<F: Fn(f32, f32) -> bool>(v: &mut [Keyed], mut last: usize, comp: F) {
    let val = v[last];
    while last > 0 && comp(val.key, v[last - 1].key) {
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

/// `std::__partial_sort(first, last, last)`: make_heap, then sort_heap.
fn heap_sort<F: Fn(f32, f32) -> bool + Copy>(v: &mut [Keyed], comp: F) {
    make_heap(v, comp);
    heap_sort_prefix(v, comp);
}

fn adjust_heap<F: Fn(f32, f32) -> bool>(
    v: &mut [Keyed],
    mut hole: usize,
    len: usize,
    val: Keyed,
    comp: F,
) {
    let top = hole;
    let mut child = hole;
    while child < len.saturating_sub(1) / 2 {
        child = 2 * (child + 1);
        if comp(v[child].key, v[child - 1].key) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !comp(v[parent].key, val.key) {
            break;
        }
        v[hole] = v[parent];
        hole = parent;
    }
    v[hole] = val;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_small_and_large() {
        for n in [0usize, 1, 2, 3, 15, 16, 17, 100, 1000] {
            let keys: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32).collect();
            let idx = argsort(&keys, false);
            for w in idx.windows(2) {
                assert!(keys[w[0] as usize] <= keys[w[1] as usize]);
            }
            let idx = argsort(&keys, true);
            for w in idx.windows(2) {
                assert!(keys[w[0] as usize] >= keys[w[1] as usize]);
            }
        }
    }

    /// Keys with many ties (as bf16 magnitudes have), some NaN, of various lengths.
    fn tie_keys(n: usize, distinct: u64, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                crate::rng::xorshift64(&mut s);
                if s.is_multiple_of(97) {
                    f32::NAN
                } else {
                    (s % distinct) as f32 * 0.25
                }
            })
            .collect()
    }

    #[test]
    fn sorting_within_spans_agrees_with_the_full_sort() {
        for (n, distinct) in [(17usize, 3u64), (100, 5), (1000, 7), (5000, 2), (70_000, 3)] {
            for seed in 0..3 {
                let keys = tie_keys(n, distinct, seed + 7 * n as u64);
                let full = argsort(&keys, false);
                let spans = [
                    vec![(0, n)],
                    vec![(0, 1), (n / 2, n / 2 + 1)],
                    vec![(n / 5, n / 5 + 9), (n / 2, n / 2 + 3), (n - 4, n)],
                ];
                for spans in spans {
                    let mut v = keyed(keys.iter().copied());
                    std_sort_asc_within(&mut v, &spans);
                    for &(lo, hi) in &spans {
                        let got: Vec<u32> = v[lo..hi].iter().map(|k| k.index).collect();
                        assert_eq!(got, full[lo..hi], "n {n} seed {seed} span {lo}..{hi}");
                    }
                }
            }
        }
    }

    #[test]
    fn select_keys_agrees_with_the_full_sort() {
        // Every bound of every small case, and spread bounds of larger ones (including sizes that
        // reach the heapsort fallback through many equal keys), both directions.
        let mut cases = 0;
        for (n, distinct) in [
            (17usize, 3u64),
            (40, 2),
            (100, 5),
            (257, 1000),
            (1000, 7),
            (5000, 2),
            (20_000, 50),
            (70_000, 3),
            (100_000, 1 << 20),
        ] {
            for seed in 0..3 {
                let keys = tie_keys(n, distinct, seed + n as u64);
                for desc in [false, true] {
                    let full = argsort(&keys, desc);
                    let ks: Vec<usize> = if n <= 257 {
                        (0..=n).collect()
                    } else {
                        vec![0, 1, 15, 16, 17, n / 3, n / 2, n - 16, n - 1, n]
                    };
                    for &k in &ks {
                        for bounds in [vec![k], vec![k / 2, k]] {
                            let sel = select_keys(keys.iter().copied(), desc, &bounds);
                            for &b in &bounds {
                                let mut a: Vec<u32> = full[..b].to_vec();
                                let mut c: Vec<u32> = sel[..b].iter().map(|x| x.index).collect();
                                a.sort_unstable();
                                c.sort_unstable();
                                assert_eq!(a, c, "n {n} distinct {distinct} desc {desc} b {b}");
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 1000);
    }

    #[test]
    fn block_partition_is_the_element_scan() {
        // The block phase must leave exactly the array and cut of the plain Hoare scan, for
        // every comparator, on keys with many ties, NaNs and sizes around the block bounds.
        let mut cases = 0;
        for n in [
            4usize, 100, 191, 192, 193, 255, 256, 257, 300, 1000, 4099, 20_000,
        ] {
            for distinct in [1u64, 2, 3, 17, 1 << 20] {
                for seed in 0..4 {
                    let keys = tie_keys(n, distinct, seed * 31 + n as u64 + distinct);
                    let base: Vec<Keyed> = keyed(keys.iter().copied());
                    type Comp = fn(f32, f32) -> bool;
                    let comps: [Comp; 4] = [less_asc, less_desc, lt_plain, gt_plain];
                    for (c, comp) in comps.into_iter().enumerate() {
                        if c >= 2 && keys.iter().any(|k| k.is_nan()) {
                            continue;
                        }
                        let mut a = base.clone();
                        let mut b = base.clone();
                        move_median_to_first(&mut a, 0, 1, n / 2, n - 1, comp);
                        move_median_to_first(&mut b, 0, 1, n / 2, n - 1, comp);
                        let p = a[0].key;
                        let ca = scan_partition(&mut a, 1, n, p, comp);
                        let cb = unguarded_partition(&mut b, 1, n, 0, comp);
                        assert_eq!(ca, cb, "n {n} distinct {distinct} comp {c}");
                        let bits = |v: &[Keyed]| -> Vec<(u32, u32)> {
                            v.iter().map(|k| (k.key.to_bits(), k.index)).collect()
                        };
                        assert_eq!(bits(&a), bits(&b), "n {n} distinct {distinct} comp {c}");
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 500);
    }

    #[test]
    fn topk_set_is_the_set_of_topk() {
        for (n, distinct) in [
            (10usize, 3u64),
            (100, 2),
            (1000, 7),
            (5000, 1 << 20),
            (70_000, 3),
        ] {
            let keys = tie_keys(n, distinct, n as u64);
            for k in [0, 1, 2, n / 64, n / 63, n / 2, n - 1, n, n + 5] {
                let mut a = topk_largest(&keys, k);
                let mut b = topk_largest_set(keys.clone(), k);
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "n {n} k {k}");
            }
        }
    }

    #[test]
    fn topk_select_is_the_set_of_topk() {
        for (n, distinct) in [(10usize, 3u64), (1000, 7), (70_000, 3)] {
            let keys = tie_keys(n, distinct, n as u64 + 1);
            for k in [0, 1, n / 64, n / 63, n / 2, n, n + 5] {
                let mut a = topk_largest(&keys, k);
                let mut v = keyed(keys.iter().copied());
                let mut b: Vec<u32> = topk_largest_select(&mut v, k)
                    .iter()
                    .map(|x| x.index)
                    .collect();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "n {n} k {k}");
            }
        }
    }

    #[test]
    fn heap_fallback_sorts() {
        let mut v: Vec<Keyed> = (0..200u32)
            .map(|i| Keyed {
                key: ((i * 31) % 17) as f32,
                index: i,
            })
            .collect();
        heap_sort(&mut v, less_asc);
        for w in v.windows(2) {
            assert!(w[0].key <= w[1].key);
        }
    }
}
