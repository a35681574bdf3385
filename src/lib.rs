//! agop: the Neural Feature Ansatz on GPT-2-family models. For every weight matrix W, how well
//! the weight Gram matrix (NFM) lines up with the Average Gradient Outer Product (AGOP) of the
//! model's output with respect to that matrix's input. See SPEC.md for the mathematics.
//!
//! Data flows one way: model → agop (measure GOP sums) → nfa (correlate) → outputs.

pub mod error;
pub mod agop;
pub mod data;
pub mod model;
pub mod modules;
pub mod nfa;
pub mod outputs;
pub mod pipeline;
pub mod report;
pub mod stages;
