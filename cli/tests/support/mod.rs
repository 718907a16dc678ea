//! Shared parts of the CLI tests.

#![allow(dead_code)]

pub mod registry;
