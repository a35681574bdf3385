//! Inputs from outside: the Hugging Face hub, corpora, tokenization.

pub mod builtin;
pub mod corpus;
pub mod hub;
pub mod tokenize;
