//! Parameter gradients, keyed by the parameter's name (e.g. `unit3.branch.w1`).
//!
//! Backward passes *accumulate* into this map, as llm.c does into its gradient buffers,
//! so a parameter used twice (the gate weights feed both paths of a unit) gets the sum.

use std::collections::BTreeMap;

use crate::tensor::Tensor;

#[derive(Debug, Default, Clone)]
pub struct Grads {
    map: BTreeMap<String, Tensor>,
}

impl Grads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `g` into the gradient of `name`.
    pub fn accumulate(&mut self, name: &str, g: Tensor) {
        match self.map.get_mut(name) {
            Some(acc) => *acc += &g,
            None => {
                self.map.insert(name.to_string(), g);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
