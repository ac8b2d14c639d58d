//! mergekit 0.0.4.2's save order, reproduced by replaying its scheduler.
//!
//! In that release every tensor load was labelled with the *shard file* its input lives in
//! (`model-00001-of-00004`), and the task graph was ordered by networkx's lexicographical
//! topological sort with key `(label, -priority)`, ties broken by graph insertion order. Merge and
//! save tasks have no label, so they run as soon as they are ready: a tensor is saved the moment
//! its last input load has run. Loads run label by label; within a label, in graph insertion
//! order, which (the graph being built by a depth-first walk from the *last* planned tensor) is
//! reverse plan order. A gather (labelled with its loads' largest label) waits for loads of
//! smaller labels still pending. This module replays exactly that.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::plan::{Model, Op};

/// `model-00001-of-00004.safetensors` -> `model-00001-of-00004` (lowercased, `pytorch_model` ->
/// `model`), as mergekit normalised shard names.
fn shard_label(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    stem.to_lowercase().replace("pytorch_model", "model")
}

/// Sorts `ops` (given in plan order) into 0.0.4.2's save order.
pub fn sort(ops: &mut Vec<Op>, models: &[Model]) {
    let n = ops.len();
    // Load nodes, deduplicated by (model, tensor) like mergekit's value-equal tasks; node ids are
    // assigned walking tensors from last to first.
    let mut load_id: HashMap<(usize, &str), usize> = HashMap::new();
    let mut load_label: Vec<String> = Vec::new();
    let mut load_children: Vec<Vec<usize>> = Vec::new();
    let mut pending = vec![0usize; n];
    for k in (0..n).rev() {
        for inp in &ops[k].inputs {
            let id = *load_id
                .entry((inp.model, inp.name.as_str()))
                .or_insert_with(|| {
                    load_label.push(
                        models[inp.model]
                            .source
                            .shard_of(&inp.name)
                            .map(|f| shard_label(&f))
                            .unwrap_or_default(),
                    );
                    load_children.push(Vec::new());
                    load_label.len() - 1
                });
            if !load_children[id].contains(&k) {
                load_children[id].push(k);
                pending[k] += 1;
            }
        }
    }
    let gather_label: Vec<String> = (0..n)
        .map(|k| {
            ops[k]
                .inputs
                .iter()
                .map(|i| load_label[load_id[&(i.model, i.name.as_str())]].clone())
                .max()
                .unwrap_or_default()
        })
        .collect();
    // Heap entries: (label, priority rank: gather 0 < load 1, node id, kind/index).
    let mut heap: BinaryHeap<Reverse<(String, u8, usize, usize)>> = BinaryHeap::new();
    for (id, label) in load_label.iter().enumerate() {
        heap.push(Reverse((label.clone(), 1, id, id)));
    }
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse((_, kind, _, idx))) = heap.pop() {
        if kind == 0 {
            order.push(idx);
            continue;
        }
        for &k in &load_children[idx] {
            pending[k] -= 1;
            if pending[k] == 0 {
                heap.push(Reverse((gather_label[k].clone(), 0, n - 1 - k, k)));
            }
        }
    }
    // Ops without inputs cannot occur; keep any leftovers in plan order for safety.
    for k in 0..n {
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let mut taken: Vec<Option<Op>> = ops.drain(..).map(Some).collect();
    ops.extend(order.into_iter().filter_map(|k| taken[k].take()));
}
