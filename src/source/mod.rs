//! Sources: what a job backs up. A directory tree is walked; git repositories are
//! mirrored and their mirrors walked; a command's output is streamed as one file; a
//! bucket's objects are listed and streamed as files under their keys.

pub mod bucket;
pub mod command;
pub mod git;
pub mod path;
