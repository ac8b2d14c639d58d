//! mergekit 0.1.5's save order, reproduced by replaying its scheduler.
//!
//! The order in which mergekit saves tensors decides the shard split and the order of the
//! index's `weight_map`, so a byte-identical output needs it exactly. mergekit does not save in
//! plan order: it builds a task graph and orders it with networkx's lexicographical topological
//! sort, keyed by each task's `(group label, -priority)`. For an ordinary merge the label of a
//! tensor's tasks is the largest name among its resolved inputs, which makes the order "sorted
//! by that label" as long as labels are unique. They are not in frankenmerges (two outputs reading
//! `model.layers.1.*` from different models, or from the same one) nor with tied LM heads
//! (`lm_head.weight` read from `model.embed_tokens.weight`). Such ties are broken by graph node
//! insertion order, which comes from exploring the graph out of a Python `set` of task indices
//! with `set.pop()`, i.e. from CPython's hash table layout for small integers. Nothing simpler
//! than a replay reproduces that, so this module replays it:
//!
//! 1. The task universe (`graph.TaskUniverse`) numbers tasks as the planner's targets are added,
//!    each depth first in argument order: per output `SaveTensor`, the tensor writer (once),
//!    the merge task, its `GatherTensors`, then one `LoadTensor` per input model, shared
//!    between outputs when value-equal (same model and same requested tensor name); finally
//!    `FinalizeModel`. Gather tasks are never shared (their input map compares by identity).
//! 2. `build_schedule` explores from `set(targets)` with `pop()`, appending `(dependency, task)`
//!    edges; a [`PySet`] emulates CPython 3.11's set of small ints (probing, dummy reuse,
//!    resizing and the `pop` finger).
//! 3. networkx numbers nodes by first appearance in those edges and runs Kahn's algorithm with a
//!    heap keyed by `(label, -priority, node number)`; saves are read off in pop order.
//!
//! The result depends on task numbers, hence on the planning order: `ops` must come in
//! mergekit's order, including the architecture template's order *within* a layer (changing it
//! changes 15 of the 54 fixture orders). mergekit's own schedule is deterministic (the same with
//! any `PYTHONHASHSEED`): the sets hold small ints, whose hash is their value.
//!
//! Checked against mergekit's `build_schedule`: on amalgam's plans for 54 configs
//! (`tests/save_order.rs`), on mergekit's own plans, and the set emulation on CPython's pops.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::arch;
use crate::plan::Op;

/// What a task of mergekit's graph is; it decides its priority and arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `SaveTensor` of output `op`.
    Save(usize),
    /// `TensorWriterTask` (label `""`, priority 10000: it runs first).
    Writer,
    /// `ExecuteMergeMethodTask` of output `op` (priority 0).
    Merge(usize),
    /// `GatherTensors` of output `op` (priority -10).
    Gather(usize),
    /// `LoadTensor` (priority -1000).
    Load,
    /// `FinalizeModel` (label `""`, priority 0).
    Finalize,
}

impl Kind {
    /// `-task.priority()`, the second element of mergekit's sort key.
    fn neg_priority(self) -> i32 {
        match self {
            Kind::Save(_) => -1000,
            Kind::Writer => -10000,
            Kind::Merge(_) | Kind::Finalize => 0,
            Kind::Gather(_) => 10,
            Kind::Load => 1000,
        }
    }
}

/// CPython 3.11's `set` restricted to non-negative ints whose hash is the value itself
/// (`TaskHandle.__hash__` returns the task index), with exactly the operations `build_schedule`
/// uses: `add` and `pop`. Only the order of `pop` matters, but that order is a function of the
/// whole table history (where keys landed, which slots hold dummies, where the finger is), so
/// every detail of `Objects/setobject.c` that moves a key is reproduced.
#[derive(Debug)]
struct PySet {
    /// Slots: [`EMPTY`], [`DUMMY`] or a key.
    table: Vec<u64>,
    /// Active plus dummy slots (`so->fill`).
    fill: usize,
    /// Active slots (`so->used`).
    used: usize,
    /// Where `pop` starts searching (`so->finger`); not reset by a resize.
    finger: usize,
}

/// A never-used slot.
const EMPTY: u64 = u64::MAX;
/// A slot whose key was popped.
const DUMMY: u64 = u64::MAX - 1;
/// `LINEAR_PROBES` in setobject.c.
const LINEAR_PROBES: usize = 9;
/// `PERTURB_SHIFT` in setobject.c.
const PERTURB_SHIFT: u32 = 5;
/// `PySet_MINSIZE`.
const MIN_SIZE: usize = 8;

impl PySet {
    fn new() -> Self {
        PySet {
            table: vec![EMPTY; MIN_SIZE],
            fill: 0,
            used: 0,
            finger: 0,
        }
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    fn slot(&self, i: usize) -> u64 {
        self.table.get(i).copied().unwrap_or(EMPTY)
    }

    fn set_slot(&mut self, i: usize, v: u64) {
        if let Some(s) = self.table.get_mut(i) {
            *s = v;
        }
    }

    /// `set_add_entry`: linear probing by runs of up to 9 slots, then perturbed jumps. A new key
    /// goes to the *last* dummy met on its probe path if any (without growing `fill`),
    /// otherwise to the first never-used slot, after which the table may grow.
    fn add(&mut self, key: u64) {
        let mask = self.mask();
        let mut perturb = key;
        let mut i = (key as usize) & mask;
        let mut freeslot: Option<usize> = None;
        loop {
            let run = if i + LINEAR_PROBES <= mask {
                LINEAR_PROBES
            } else {
                0
            };
            for e in i..=i + run {
                match self.slot(e) {
                    EMPTY => {
                        match freeslot {
                            Some(f) => {
                                self.set_slot(f, key);
                                self.used += 1;
                            }
                            None => {
                                self.set_slot(e, key);
                                self.fill += 1;
                                self.used += 1;
                                if self.fill * 5 >= mask * 3 {
                                    let minused = if self.used > 50_000 {
                                        self.used * 2
                                    } else {
                                        self.used * 4
                                    };
                                    self.resize(minused);
                                }
                            }
                        }
                        return;
                    }
                    DUMMY => freeslot = Some(e),
                    k if k == key => return,
                    _ => {}
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i
                .wrapping_mul(5)
                .wrapping_add(1)
                .wrapping_add(perturb as usize))
                & mask;
        }
    }

    /// `set_table_resize`: the smallest power of two above `minused` (at least 8); active keys
    /// are reinserted in old-table order with `set_insert_clean`, dummies dropped.
    fn resize(&mut self, minused: usize) {
        let mut size = MIN_SIZE;
        while size <= minused {
            size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![EMPTY; size]);
        let mask = size - 1;
        for key in old.into_iter().filter(|&k| k != EMPTY && k != DUMMY) {
            let mut perturb = key;
            let mut i = (key as usize) & mask;
            'probe: loop {
                let run = if i + LINEAR_PROBES <= mask {
                    LINEAR_PROBES
                } else {
                    0
                };
                for e in i..=i + run {
                    if self.slot(e) == EMPTY {
                        self.set_slot(e, key);
                        break 'probe;
                    }
                }
                perturb >>= PERTURB_SHIFT;
                i = (i
                    .wrapping_mul(5)
                    .wrapping_add(1)
                    .wrapping_add(perturb as usize))
                    & mask;
            }
        }
        self.fill = self.used;
    }

    /// `set_pop`: the first active slot at or after the finger (wrapping), left as a dummy; the
    /// finger moves just past it.
    fn pop(&mut self) -> Option<u64> {
        if self.used == 0 {
            return None;
        }
        let mask = self.mask();
        let mut e = self.finger & mask;
        loop {
            let k = self.slot(e);
            if k != EMPTY && k != DUMMY {
                self.set_slot(e, DUMMY);
                self.used -= 1;
                self.finger = e + 1;
                return Some(k);
            }
            e = if e >= mask { 0 } else { e + 1 };
        }
    }
}

/// mergekit's task graph for `ops`, numbered like `TaskUniverse`.
struct Universe {
    kinds: Vec<Kind>,
    /// Group label of each task, as an index into `labels` (sorted, so rank order is string order).
    label: Vec<usize>,
    /// Arguments in `arguments()` order.
    args: Vec<Vec<usize>>,
    /// Targets of the executor: the saves in plan order, then `FinalizeModel`.
    targets: Vec<usize>,
}

impl Universe {
    fn build(ops: &[Op]) -> Universe {
        // Label strings: "" for the writer and finalizer, each op's label, each input name.
        let mut names: Vec<&str> = vec![""];
        for op in ops {
            names.push(&op.label);
            names.extend(op.inputs.iter().map(|i| i.name.as_str()));
        }
        names.sort_unstable();
        names.dedup();
        let rank: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let rank_of = |s: &str| rank.get(s).copied().unwrap_or(0);

        let mut u = Universe {
            kinds: Vec::new(),
            label: Vec::new(),
            args: Vec::new(),
            targets: Vec::with_capacity(ops.len() + 1),
        };
        let mut writer = None;
        // LoadTensor tasks compare by value: (model, requested name) identifies one.
        let mut loads: HashMap<(usize, &str), usize> = HashMap::new();
        for (k, op) in ops.iter().enumerate() {
            let label = rank_of(&op.label);
            let save = u.push(Kind::Save(k), label);
            let w = match writer {
                Some(w) => w,
                None => {
                    let w = u.push(Kind::Writer, 0);
                    writer = Some(w);
                    w
                }
            };
            let merge = u.push(Kind::Merge(k), label);
            let gather = u.push(Kind::Gather(k), label);
            u.set_args(save, vec![w, merge]);
            u.set_args(merge, vec![gather]);
            // Pre- and post-weights (embeddings, norm, LM head) ask every model for the output's
            // own name, layer tensors for the input layer's name; `OpInput::name` is the name
            // that was found (a tied LM head resolves to the embeddings, a different task from
            // the embeddings' own load).
            let per_layer = arch::split_layer(&op.out_name).is_some();
            let mut gather_args = Vec::with_capacity(op.inputs.len());
            for input in &op.inputs {
                let requested = if per_layer {
                    input.name.as_str()
                } else {
                    op.out_name.as_str()
                };
                let id = match loads.get(&(input.model, requested)) {
                    Some(&id) => id,
                    None => {
                        let id = u.push(Kind::Load, rank_of(&input.name));
                        loads.insert((input.model, requested), id);
                        id
                    }
                };
                gather_args.push(id);
            }
            u.set_args(gather, gather_args);
            u.targets.push(save);
        }
        let saves = u.targets.clone();
        let fin = u.push(Kind::Finalize, 0);
        let w = match writer {
            Some(w) => w,
            None => u.push(Kind::Writer, 0),
        };
        let mut fin_args = Vec::with_capacity(saves.len() + 1);
        fin_args.push(w);
        fin_args.extend(saves);
        u.set_args(fin, fin_args);
        u.targets.push(fin);
        u
    }

    fn push(&mut self, kind: Kind, label: usize) -> usize {
        self.kinds.push(kind);
        self.label.push(label);
        self.args.push(Vec::new());
        self.kinds.len() - 1
    }

    fn set_args(&mut self, task: usize, args: Vec<usize>) {
        if let Some(a) = self.args.get_mut(task) {
            *a = args;
        }
    }
}

/// The order in which mergekit 0.1.5 saves the outputs of `ops`, as indices into `ops`.
///
/// `ops` must be in mergekit's planning order (pre-weights, then layer by layer in the
/// architecture template's order, then post-weights), since task numbers follow it.
pub fn save_order(ops: &[Op]) -> Vec<usize> {
    if ops.is_empty() {
        return Vec::new();
    }
    let u = Universe::build(ops);
    let n = u.kinds.len();
    // The dummy node networkx sees before every target gets the number `n`.
    let dummy = n;

    // build_schedule's exploration.
    let mut to_explore = PySet::new();
    for &t in &u.targets {
        to_explore.add(t as u64);
    }
    let mut explored = vec![false; n];
    let mut edges: Vec<(usize, usize)> = Vec::with_capacity(n * 2);
    while let Some(t) = to_explore.pop() {
        let t = t as usize;
        match explored.get_mut(t) {
            Some(seen) if !*seen => *seen = true,
            _ => continue,
        }
        for &dep in u.args.get(t).map(Vec::as_slice).unwrap_or(&[]) {
            to_explore.add(dep as u64);
            edges.push((dep, t));
        }
    }
    edges.extend(u.targets.iter().map(|&t| (dummy, t)));

    // networkx.DiGraph(edges): nodes numbered by first appearance, duplicate edges merged.
    let mut node_id = vec![usize::MAX; n + 1];
    let mut next_id = 0;
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    let mut indegree = vec![0usize; n + 1];
    let mut seen_edges = std::collections::HashSet::with_capacity(edges.len());
    for &(a, b) in &edges {
        for x in [a, b] {
            if let Some(id) = node_id.get_mut(x) {
                if *id == usize::MAX {
                    *id = next_id;
                    next_id += 1;
                }
            }
        }
        if seen_edges.insert((a, b)) {
            if let Some(s) = succ.get_mut(a) {
                s.push(b);
            }
            if let Some(d) = indegree.get_mut(b) {
                *d += 1;
            }
        }
    }

    // lexicographical_topological_sort: Kahn's algorithm, heap keyed (label, -priority, id).
    let key = |x: usize| -> Reverse<(usize, i32, usize, usize)> {
        let (label, negp) = match u.kinds.get(x) {
            Some(k) => (u.label.get(x).copied().unwrap_or(0), k.neg_priority()),
            None => (0, 0), // the dummy: ("", 0)
        };
        Reverse((
            label,
            negp,
            node_id.get(x).copied().unwrap_or(usize::MAX),
            x,
        ))
    };
    let mut heap: BinaryHeap<_> = (0..=n)
        .filter(|&x| node_id.get(x).is_some_and(|&id| id != usize::MAX))
        .filter(|&x| indegree.get(x) == Some(&0))
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(ops.len());
    while let Some(Reverse((_, _, _, x))) = heap.pop() {
        for &c in succ.get(x).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(d) = indegree.get_mut(c) {
                *d -= 1;
                if *d == 0 {
                    heap.push(key(c));
                }
            }
        }
        if let Some(Kind::Save(k)) = u.kinds.get(x) {
            order.push(*k);
        }
    }
    // Every save is reachable from the dummy, so none can be missing; keep plan order for any
    // that were, rather than dropping a tensor.
    if order.len() != ops.len() {
        let mut placed = vec![false; ops.len()];
        for &k in &order {
            if let Some(p) = placed.get_mut(k) {
                *p = true;
            }
        }
        order.extend((0..ops.len()).filter(|&k| !placed.get(k).copied().unwrap_or(true)));
    }
    order
}

/// Reorders `ops` (given in plan order) into mergekit 0.1.5's save order.
pub fn sort(ops: &mut Vec<Op>) {
    let order = save_order(ops);
    let mut taken: Vec<Option<Op>> = ops.drain(..).map(Some).collect();
    ops.extend(
        order
            .into_iter()
            .filter_map(|k| taken.get_mut(k).and_then(Option::take)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny xorshift so the set test needs no dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A planned output with only what the scheduler looks at: its name and inputs (the label,
    /// as the planner sets it, is the largest input name).
    fn test_op(out_name: String, inputs: Vec<crate::plan::OpInput>) -> Op {
        let label = inputs
            .iter()
            .map(|i| i.name.clone())
            .max()
            .unwrap_or_default();
        Op {
            out_name,
            per_input: vec![amalgam_methods::ParamValues::new(); inputs.len()],
            inputs,
            base: None,
            shared: amalgam_methods::ParamValues::new(),
            shape: vec![1],
            work_dtype: amalgam_io::DType::BF16,
            out_dtype: amalgam_io::DType::BF16,
            float: true,
            label,
            align: None,
        }
    }

    #[test]
    fn pyset_pops_every_key_once() {
        let mut s = PySet::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut model = std::collections::HashSet::new();
        for _ in 0..20_000 {
            if rng(&mut state).is_multiple_of(3) {
                let got = s.pop();
                match got {
                    Some(k) => assert!(model.remove(&k), "popped {k} twice"),
                    None => assert!(model.is_empty()),
                }
            } else {
                let k = rng(&mut state) % 5000;
                s.add(k);
                model.insert(k);
            }
            assert_eq!(s.used, model.len());
            assert!(s.fill < s.table.len());
        }
    }

    /// CPython's own pops after the seeded add/pop sequences in `set_traces.json` (written by
    /// `tests/fixtures/order/make_order.py`).
    #[test]
    fn pyset_pops_like_cpython() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/order/set_traces.json");
        let text = std::fs::read_to_string(&path).expect("set_traces.json");
        let traces: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let traces = traces.as_array().expect("list");
        assert!(traces.len() >= 20);
        for (t, trace) in traces.iter().enumerate() {
            let mut s = PySet::new();
            for k in 0..trace["prefix"].as_u64().expect("prefix") {
                s.add(k);
            }
            let want: Vec<u64> = trace["pops"]
                .as_array()
                .expect("pops")
                .iter()
                .map(|v| v.as_u64().expect("key"))
                .collect();
            let mut got = Vec::with_capacity(want.len());
            for op in trace["ops"].as_array().expect("ops") {
                match op.as_i64().expect("op") {
                    -1 => got.push(s.pop().expect("CPython popped")),
                    k => s.add(k as u64),
                }
            }
            assert_eq!(got, want, "trace {t}");
        }
    }

    /// mergekit's own plans (outputs and their loads, in plan order) against the save order its
    /// `build_schedule` produced (`plans.json`, written by `tests/fixtures/order/make_order.py`).
    /// This checks the replay on its own, whatever amalgam's planner does.
    #[test]
    fn replays_mergekit_plans() {
        use crate::plan::OpInput;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/order/plans.json");
        let text = std::fs::read_to_string(&path).expect("plans.json");
        let cases: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let cases = cases.as_array().expect("list");
        assert!(cases.len() >= 5);
        for case in cases {
            let name = case["name"].as_str().expect("name");
            let mut ops = Vec::new();
            for entry in case["plan"].as_array().expect("plan") {
                let out_name = entry[0].as_str().expect("output name").to_string();
                let mut inputs = Vec::new();
                for load in entry[1].as_array().expect("loads") {
                    let model = load[0].as_u64().expect("model") as usize;
                    let requested = load[1].as_str().expect("requested");
                    let found = load[2].as_str().expect("found").to_string();
                    // What `Universe::build` assumes to rebuild LoadTensor identities.
                    let expected_request = if arch::split_layer(&out_name).is_some() {
                        found.as_str()
                    } else {
                        out_name.as_str()
                    };
                    assert_eq!(requested, expected_request, "{name}: {out_name}");
                    inputs.push(OpInput { model, name: found });
                }
                ops.push(test_op(out_name, inputs));
            }
            let want: Vec<usize> = case["order"]
                .as_array()
                .expect("order")
                .iter()
                .map(|v| v.as_u64().expect("position") as usize)
                .collect();
            assert_eq!(save_order(&ops), want, "{name}");
        }
    }

    /// A plan the size of a large frankenmerge (4000 outputs over 8 models, with shared loads)
    /// comes back as a permutation, sorted by label.
    #[test]
    fn large_plan_is_a_sorted_permutation() {
        use crate::plan::OpInput;
        let mut ops = Vec::new();
        for k in 0..4000usize {
            let layer = k / 9 % 40;
            let inputs: Vec<OpInput> = (0..8)
                .map(|m| OpInput {
                    model: (m + k) % 8,
                    name: format!("model.layers.{layer}.t{}.weight", k % 9),
                })
                .collect();
            ops.push(test_op(
                format!("model.layers.{}.t{}.weight", k / 9, k % 9),
                inputs,
            ));
        }
        let order = save_order(&ops);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..ops.len()).collect::<Vec<_>>());
        assert!(order.windows(2).all(|w| ops[w[0]].label <= ops[w[1]].label));
    }

    #[test]
    fn empty_plan() {
        assert!(save_order(&[]).is_empty());
    }
}
