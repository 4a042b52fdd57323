//! Parameter gradients, keyed by the parameter's name (e.g. `unit3.branch.w1`).
//!
//! Backward passes *accumulate* into this map, as llm.c does into its gradient buffers,
//! so a parameter used twice (the gate weights feed both paths of a unit) gets the sum.

use std::collections::BTreeMap;

use crate::float::Float;
use crate::tensor::Tensor;

#[derive(Debug, Default, Clone)]
pub struct Grads<T: Float = f64> {
    map: BTreeMap<String, Tensor<T>>,
}

impl<T: Float> Grads<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `g` into the gradient of `name`.
    pub fn accumulate(&mut self, name: &str, g: Tensor<T>) {
        match self.map.get_mut(name) {
            Some(acc) => *acc += &g,
            None => {
                self.map.insert(name.to_string(), g);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor<T>> {
        self.map.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor<T>)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
