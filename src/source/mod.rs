//! Sources: what a job backs up. Each produces a stream of entries for the pipeline.

pub mod path;
